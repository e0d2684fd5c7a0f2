"""Batch studies over seeds x optimizers with papermill: ``sloguard batch plan`` and ``sloguard batch run``.

``plan`` writes one papermill parameter YAML per (seed, optimizer) pair under ``papermill_params/<name>/``.
``run`` executes ``notebooks/tune.ipynb`` once per YAML whose study log is not complete yet, saving the
executed notebook next to the log. It is resumable at two levels: a complete pair is skipped, and a
partial one resumes inside the notebook (``resume=True``), so killing ``batch run`` and starting it again
never repeats a finished trial.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import InputError
from .runner import StudySpec, log_path_for
from .slo import SLO
from .trial_log import read_log
from .workload import parse_workload, workload_from

REPO = Path(__file__).resolve().parent.parent
TUNE_NOTEBOOK = REPO / "notebooks" / "tune.ipynb"


def plan(name: str, seeds: Sequence[int], optimizers: Sequence[str], *, budget: int, backend: str, model: str,
         gpu: str, slo: SLO, workload: str, out_root: str | Path = "results",
         params_root: str | Path = "papermill_params") -> list[Path]:
    """Write one parameter file per pair; an existing identical plan is left as it is."""
    workload_fields = parse_workload(workload).to_dict()  # fail now, not in the tenth notebook
    out_dir = Path(out_root) / name
    folder = Path(params_root) / name
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for seed in seeds:
        for opt in optimizers:
            params = {"model": model, "gpu": gpu, "backend": backend, "optimizer": opt, "seed": int(seed),
                      "budget": int(budget), "slo_ttft_p99_ms": slo.ttft_p99_ms, "slo_itl_p99_ms": slo.itl_p99_ms,
                      "workload": workload_fields, "out_dir": str(out_dir)}
            path = folder / f"{opt}_seed{seed}.yaml"
            path.write_text(yaml.safe_dump(params, sort_keys=False))
            written.append(path)
    return written


@dataclass(frozen=True)
class Pair:
    params_file: Path
    params: dict[str, Any]

    @property
    def log_path(self) -> Path:
        p = self.params
        spec = StudySpec(model=p["model"], gpu=p["gpu"], optimizer=p["optimizer"], seed=p["seed"],
                         budget=p["budget"], backend=p["backend"], slo=SLO(p["slo_ttft_p99_ms"], p["slo_itl_p99_ms"]),
                         workload=workload_from(p["workload"]), space=None)
        return log_path_for(p["out_dir"], spec)

    def done_trials(self) -> int:
        return len(read_log(self.log_path).trials) if self.log_path.exists() else 0

    @property
    def complete(self) -> bool:
        return self.done_trials() >= int(self.params["budget"])


def load_pairs(params_dir: str | Path) -> list[Pair]:
    files = sorted(Path(params_dir).glob("*.yaml"))
    if not files:
        raise InputError(f"no parameter files (*.yaml) in {str(params_dir)!r}; run `sloguard batch plan` first")
    pairs = []
    for f in files:
        try:
            params = yaml.safe_load(f.read_text())
        except yaml.YAMLError as e:
            raise InputError(f"parameter file {str(f)!r} is not valid YAML: {e}") from None
        pairs.append(Pair(f, params))
    return pairs


def run(params_dir: str | Path, *, notebook: str | Path = TUNE_NOTEBOOK, kernel: str | None = None,
        progress: bool = True) -> list[Path]:
    """Execute the tune notebook for every incomplete pair; returns the logs of all pairs."""
    import papermill as pm  # optional: the notebooks extra
    from tqdm.auto import tqdm

    pairs = load_pairs(params_dir)
    for pair in tqdm(pairs, desc="pairs", unit="pair", disable=not progress):
        if pair.complete:
            continue
        out_dir = Path(pair.params["out_dir"])
        out_dir.mkdir(parents=True, exist_ok=True)
        executed = out_dir / f"{pair.params_file.stem}.ipynb"
        pm.execute_notebook(str(notebook), str(executed), parameters=pair.params | {"resume": True},
                            kernel_name=kernel, progress_bar=False, cwd=str(REPO))
    return [p.log_path for p in pairs]
