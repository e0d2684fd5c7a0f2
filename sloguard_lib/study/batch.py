"""Batch studies over seeds x optimizers with papermill: ``sloguard batch plan`` and ``sloguard batch run``.

``plan`` writes one papermill parameter YAML per (seed, optimizer) pair under ``papermill_params/<name>/``.
``run`` executes the packaged ``tune.ipynb`` once per YAML whose study log is not complete yet, or whose
executed notebook is missing, saving the executed notebook next to the log. It is resumable at two levels: a
complete pair with its notebook is skipped, and a partial one resumes inside the notebook (``resume=True``), so
killing ``batch run`` and starting it again never repeats a finished trial. A complete log without its notebook
(trials run elsewhere: ``sloguard tune`` on a lent GPU, its logs carried back) gets its notebook on any machine,
without a GPU: resuming a whole study measures nothing.

A batch never mixes studies. ``plan`` refuses to overwrite a different plan of the same name (``replace``
says so explicitly); ``run`` checks, before it runs anything, that every existing log is the study its
parameter file describes (model, GPU, backend, SLO, workload, space; no more trials than the budget) and
that the results folder holds no log outside the plan. Paths in a plan are relative to the folder that
holds ``papermill_params/``, and notebooks execute there, so a batch runs the same from any working
directory. Parameter files are data: only the tune notebook's own parameters, with plain values, reach
papermill (a key is pasted into code by papermill, so an unchecked key could run anything).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from sloguard_lib.errors import InputError, yaml_problem
from sloguard_lib.measure.slo import SLO
from sloguard_lib.measure.workload import Workload, parse_workload, workload_from
from sloguard_lib.study.runner import StudySpec, check_same_study, is_complete, log_path_for
from sloguard_lib.study.trial_log import is_trial_log, read_log

TUNE_NOTEBOOK = Path(__file__).parents[1] / "notebooks" / "tune.ipynb"  # package data: there in a wheel too
PARAMS_ROOT = "papermill_params"
#: the tune notebook's parameters and the types a parameter file may give them
PARAMETERS: dict[str, tuple[type, ...]] = {
    "model": (str,), "gpu": (str,), "backend": (str,), "optimizer": (str,), "seed": (int,), "budget": (int,),
    "slo_ttft_p99_ms": (int, float), "slo_itl_p99_ms": (int, float), "workload": (dict,), "out_dir": (str,),
}
_PART = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
NAME = re.compile(rf"{_PART}(/{_PART})*")  # nested (``h100/multiseed``): results/ keeps one folder per GPU


def _check_name(name: str) -> str:
    if not NAME.fullmatch(name) or ".." in name:
        raise InputError(f"batch name {name!r}: use letters, digits, '-', '_' and '.', '/' between folders (it "
                         "names two folders)")
    return name


def plan(name: str, seeds: Sequence[int], optimizers: Sequence[str], *, budget: int, backend: str, model: str,
         gpu: str, slo: SLO, workload: str, root: str | Path = ".", replace: bool = False) -> list[Path]:
    """Write one parameter file per pair under ``root/papermill_params/<name>/``; the logs will go to
    ``root/results/<name>/``. An identical existing plan is left as it is; a different one is an error unless
    ``replace`` (then its files are removed first)."""
    folder = Path(root) / PARAMS_ROOT / _check_name(name)
    dropped = [flag for flag, set_ in (("--slo-e2e-p99", slo.e2e_p99_ms is not None),
                                       ("--slo-tpot-p99", slo.tpot_p99_ms is not None),
                                       ("--goodput-def", slo.goodput_def != SLO().goodput_def)) if set_]
    if dropped:  # the tune notebook's parameters hold the TTFT and ITL SLOs only
        raise InputError(f"batch plan carries only the TTFT and ITL SLOs into its notebooks; {', '.join(dropped)} "
                         "would be ignored: run those studies with `sloguard tune`")
    wl = parse_workload(workload)
    wanted: dict[str, dict[str, Any]] = {}
    for seed in seeds:
        for opt in optimizers:
            params = {"model": model, "gpu": gpu, "backend": backend, "optimizer": opt, "seed": int(seed),
                      "budget": int(budget), "slo_ttft_p99_ms": slo.ttft_p99_ms, "slo_itl_p99_ms": slo.itl_p99_ms,
                      "workload": wl.to_dict(), "out_dir": f"results/{name}"}
            _spec(params, f"pair seed {seed} / {opt}")  # every mistake now, not in the tenth notebook
            wanted[f"{opt}_seed{seed}.yaml"] = params
    existing = {p.name: p for p in folder.glob("*.yaml")}
    if existing:
        same = set(existing) == set(wanted) and all(
            _normal(yaml.safe_load(existing[f].read_text())) == _normal(p) for f, p in wanted.items())
        if same:
            return [folder / f for f in wanted]
        if not replace:
            raise InputError(f"{str(folder)!r} already holds a different plan ({len(existing)} files); pass "
                             "--replace to replace it, or choose another --name")
        for p in existing.values():
            p.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    for f, params in wanted.items():
        (folder / f).write_text(yaml.safe_dump(params, sort_keys=False))
    return [folder / f for f in wanted]


def _normal(params: Any) -> Any:
    """A parameter mapping with its workload completed by today's defaults (older plans lack newer fields)."""
    if isinstance(params, dict) and isinstance(params.get("workload"), dict):
        return params | {"workload": Workload.from_dict(params["workload"]).to_dict()}
    return params


def _spec(params: dict[str, Any], where: str) -> StudySpec:
    try:
        return StudySpec(model=params["model"], gpu=params["gpu"], optimizer=params["optimizer"],
                         seed=params["seed"], budget=params["budget"], backend=params["backend"],
                         slo=SLO(params["slo_ttft_p99_ms"], params["slo_itl_p99_ms"]),
                         workload=workload_from(params["workload"]))
    except InputError as e:
        raise InputError(f"{where}: {e}") from None


@dataclass(frozen=True)
class Pair:
    params_file: Path
    params: dict[str, Any]
    root: Path  # the folder holding papermill_params/: relative paths in the plan start here

    @cached_property  # builds the study's space: once per pair, not at every look at its log
    def spec(self) -> StudySpec:
        return _spec(self.params, f"parameter file {str(self.params_file)!r}")

    @property
    def out_dir(self) -> Path:
        return self.root / str(self.params["out_dir"])

    @cached_property
    def log_path(self) -> Path:
        return log_path_for(self.out_dir, self.spec)

    @property
    def complete(self) -> bool:
        """Whether its log holds the whole study, as the runner decides it (:func:`runner.is_complete`)."""
        return is_complete(self.spec, self.out_dir)

    @property
    def executed(self) -> Path:
        """The executed notebook of this pair."""
        return self.out_dir / f"{self.params_file.stem}.ipynb"


def load_pairs(params_dir: str | Path) -> list[Pair]:
    folder = Path(params_dir)
    files_ = sorted(folder.glob("*.yaml"))
    if not files_:
        raise InputError(f"no parameter files (*.yaml) in {str(folder)!r}; run `sloguard batch plan` first")
    pairs = []
    for f in files_:
        try:
            params = yaml.safe_load(f.read_text())
        except yaml.YAMLError as e:
            raise InputError(f"parameter file {str(f)!r} is not valid YAML: {yaml_problem(e)}") from None
        _check_params(f, params)
        pairs.append(Pair(f, params, folder.resolve().parent.parent))
    return pairs


def _check_params(path: Path, params: Any) -> None:
    if not isinstance(params, dict):
        raise InputError(f"parameter file {str(path)!r}: expected a mapping of the tune notebook's parameters")
    unknown = sorted(str(k) for k in params if k not in PARAMETERS)
    if unknown:
        raise InputError(f"parameter file {str(path)!r}: unknown parameter {unknown[0]!r}; the tune notebook "
                         f"takes {', '.join(PARAMETERS)}")
    for key, types in PARAMETERS.items():
        if key not in params:
            raise InputError(f"parameter file {str(path)!r}: missing parameter {key!r}")
        value = params[key]
        if isinstance(value, bool) or not isinstance(value, types):
            raise InputError(f"parameter file {str(path)!r}: {key} must be {types[0].__name__}, got {value!r}")
    out = Path(params["out_dir"])
    if out.is_absolute() or ".." in out.parts:
        raise InputError(f"parameter file {str(path)!r}: out_dir {str(out)!r} must be a folder under the project")


def check(pairs: Sequence[Pair]) -> None:
    """Refuse a batch whose results folders hold other studies (see the module docstring)."""
    for pair in pairs:
        if pair.log_path.exists():
            spec = pair.spec
            check_same_study(pair.log_path, read_log(pair.log_path), spec.header(), budget=spec.budget)
    planned = {pair.log_path.resolve() for pair in pairs}
    for out_dir in sorted({pair.out_dir for pair in pairs}):
        strays = [p for p in sorted(out_dir.glob("*.jsonl")) if p.resolve() not in planned and is_trial_log(p)]
        if strays:
            raise InputError(f"{str(out_dir)!r} holds {len(strays)} study log(s) that are not in this plan (e.g. "
                             f"{strays[0].name}); a report would mix them in: move them away, or plan under "
                             "another --name")


def run(name: str, *, root: str | Path = ".", notebook: str | Path = TUNE_NOTEBOOK, kernel: str | None = None,
        progress: bool = True, workers: int = 1, num_gpus: float | None = None,
        ray_address: str | None = None) -> tuple[int, list[Path]]:
    """Execute the tune notebook for every pair that is incomplete or lacks its executed notebook; returns how many
    ran and the logs of all pairs.

    ``workers`` > 1 (or a ``ray_address``) runs that many pairs side by side as Ray tasks, each holding
    ``num_gpus`` GPUs (default: 1 on a real backend, 0 on the sim); each pair's study is its own single writer,
    as when pairs run one after the other."""
    from tqdm.auto import tqdm

    pairs = load_pairs(Path(root) / PARAMS_ROOT / _check_name(name))
    check(pairs)
    measuring = [p for p in pairs if not p.complete]  # reads each log once
    todo = [p for p in pairs if p in measuring or not p.executed.exists()]
    jobs = [(str(notebook), str(p.executed), p.params | {"resume": True}, kernel, str(p.root)) for p in todo]
    for p in todo:
        p.out_dir.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(jobs), desc="pairs", unit="pair", disable=not progress)
    if workers == 1 and ray_address is None:
        for job in jobs:
            _execute(*job)
            bar.update()
    elif jobs:
        from sloguard_lib.engine import ON_GPU
        from sloguard_lib.study.workers import check_gpus, ray_session

        gpus = num_gpus if num_gpus is not None else float(any(p.params.get("backend") in ON_GPU for p in measuring))
        with ray_session(workers, ray_address, todo[0].out_dir / "server_logs") as ray:
            check_gpus(ray, min(workers, len(jobs)), gpus)
            task = ray.remote(num_cpus=0 if gpus else 1, num_gpus=gpus, max_retries=0)(_execute)
            running: list[Any] = []
            for job in jobs:
                if len(running) >= workers:
                    (finished,), running = ray.wait(running, num_returns=1)
                    ray.get(finished)  # a failed pair raises here, as it does when pairs run in turn
                    bar.update()
                running.append(task.remote(*job))
            for ref in running:
                ray.get(ref)
                bar.update()
    bar.close()
    return len(jobs), [p.log_path for p in pairs]


def _execute(notebook: str, executed: str, parameters: dict[str, Any], kernel: str | None, cwd: str) -> None:
    import papermill as pm  # optional: the notebooks extra

    pm.execute_notebook(notebook, executed, parameters=parameters, kernel_name=kernel, progress_bar=False, cwd=cwd)
