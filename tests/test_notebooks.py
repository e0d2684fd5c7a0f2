"""Every notebook runs top to bottom with papermill on the simulator, and validates as nbformat v4."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import papermill as pm
import pytest

from sloguard_lib import batch, report
from sloguard_lib.cli import main
from sloguard_lib.trial_log import read_log

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "sloguard_lib" / "notebooks").glob("*.ipynb"))
SMALL = {"concurrency": 16, "num_requests": 32, "input_len": 256, "output_len": 64}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_are_valid_and_stripped(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "commit notebooks without outputs"
    assert any("parameters" in c.metadata.get("tags", []) for c in code)


def _execute(name: str, tmp_path: Path, **params: object) -> nbformat.NotebookNode:
    out = tmp_path / f"{name}.out.ipynb"
    pm.execute_notebook(str(ROOT / "sloguard_lib" / "notebooks" / f"{name}.ipynb"), str(out), parameters=params, cwd=str(ROOT),
                        progress_bar=False, kernel_name="python3")
    return nbformat.read(out, as_version=4)


@pytest.fixture(scope="module")
def batch_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2 seeds x 2 optimizers batch run through `sloguard batch plan/run` (the tune notebook)."""
    root = tmp_path_factory.mktemp("batch")
    files = batch.plan("t", [1, 2], ["random", "tba-tpe"], budget=3, backend="sim", model="qwen2-1.5b",
                       gpu="a100-40gb", slo=__import__("sloguard_lib.slo").slo.SLO(500, 100),
                       workload="concurrency=16,num_requests=32,input_len=256,output_len=64",
                       out_root=root / "results", params_root=root / "params")
    assert len(files) == 4
    logs = batch.run(root / "params" / "t", kernel="python3", progress=False)
    assert all(len(read_log(p).trials) == 3 for p in logs)
    assert len(list((root / "results" / "t").glob("*.ipynb"))) == 4  # executed copies next to the logs
    return root / "results" / "t"


def test_batch_run_skips_complete_pairs(batch_dir: Path, tmp_path: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in batch_dir.glob("*.jsonl")}
    batch.run(batch_dir.parent.parent / "params" / "t", kernel="python3", progress=False)
    assert {p: p.stat().st_mtime_ns for p in batch_dir.glob("*.jsonl")} == before


def test_analysis_notebook_and_report_agree(batch_dir: Path, tmp_path: Path) -> None:
    nb = _execute("analysis", tmp_path, results_dir=str(batch_dir), figures_dir=str(tmp_path / "figs"))
    assert not any(o.get("output_type") == "error" for c in nb.cells for o in c.get("outputs", []))
    summary = json.loads((batch_dir / "summary.json").read_text())
    assert set(summary["optimizers"]) == {"random", "tba-tpe"}
    assert summary["optimizers"]["random"]["trials"] == 6
    runs = report.per_run(report.load_trials(batch_dir))
    assert summary == json.loads(json.dumps(report.summary(runs), default=float))
    assert {p.name for p in (tmp_path / "figs").glob("*.png")} >= {
        "convergence_per_seed.png", "best_so_far.png", "latency_distribution.png", "crash_map.png", "knob_effects.png"}


def test_report_cli(batch_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--results-dir", str(batch_dir), "--output", str(tmp_path / "f")]) == 0
    out = capsys.readouterr().out
    assert "Fast-cluster trials" in out and "Post-hit consistency" in out and "Feasibility" in out
    assert main(["report", "--results-dir", str(tmp_path / "empty"), "--output", str(tmp_path)]) == 2


def test_tune_notebook_writes_log_and_resumes(tmp_path: Path) -> None:
    params = {"budget": 2, "workload": SMALL, "out_dir": str(tmp_path), "optimizer": "tpe"}
    _execute("tune", tmp_path, **params)
    nb = _execute("tune", tmp_path, **(params | {"budget": 3}))
    log = next(tmp_path.glob("*.jsonl"))
    assert [t["trial"] for t in read_log(log).trials] == [0, 1, 2]
    assert any("crash waste" in o.get("text", "") for c in nb.cells for o in c.get("outputs", []))


def test_quickstart_notebook_runs_without_gpu(tmp_path: Path) -> None:
    nb = _execute("quickstart", tmp_path, install=False, budget=3, workload=SMALL, out_dir=str(tmp_path))
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "backend: sim" in text
    assert any("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


def test_inspector_widget_shows_a_crash(tmp_path: Path) -> None:
    from sloguard_lib.runner import StudySpec, run_study
    from sloguard_lib.widgets import TrialInspector
    from sloguard_lib.workload import workload_from

    run_study(StudySpec(model="llama-3.1-8b", gpu="l4-24gb", optimizer="random", seed=1, budget=6,
                        workload=workload_from(SMALL)), tmp_path)
    inspector = TrialInspector(tmp_path)
    inspector.status.value = "crash"
    assert inspector.trial.options, "the L4/8B study has crashes"
    assert "crashed: kv_insufficient" in inspector.detail.value
    assert "No available memory" in inspector.detail.value or "To serve at least one" in inspector.detail.value
    inspector.status.value = "ok"
    assert "crashed" not in inspector.detail.value
    _execute("inspect", tmp_path, results_dir=str(tmp_path))
