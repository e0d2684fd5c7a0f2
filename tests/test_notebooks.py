"""Every notebook runs top to bottom with papermill on the simulator, and validates as nbformat v4."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import papermill as pm
import pytest

from sloguard_lib.analysis import report
from sloguard_lib.cli import main
from sloguard_lib.measure.slo import SLO
from sloguard_lib.study import batch
from sloguard_lib.study.trial_log import read_log

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "sloguard_lib" / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
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
    pm.execute_notebook(str(NOTEBOOK_DIR / f"{name}.ipynb"), str(out), parameters=params, cwd=str(ROOT),
                        progress_bar=False, kernel_name="python3")
    return nbformat.read(out, as_version=4)


@pytest.fixture(scope="module")
def batch_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2 seeds x 2 optimizers batch run through `sloguard batch plan/run --workers 2` (the tune notebook), from
    another working directory than the project's (paths in a plan are relative to the project, not to the cwd)."""
    root = tmp_path_factory.mktemp("batch")
    files = batch.plan("t", [1, 2], ["random", "tba-tpe"], budget=3, backend="sim", model="qwen2-1.5b",
                       gpu="a100-40gb", slo=SLO(500, 100),
                       workload="concurrency=16,num_requests=32,input_len=256,output_len=64", root=root)
    assert len(files) == 4 and files[0].parent == root / "papermill_params" / "t"
    ran, logs = batch.run("t", root=root, kernel="python3", progress=False, workers=2)  # two pairs at once, on Ray
    assert ran == 4 and all(len(read_log(p).trials) == 3 for p in logs)
    assert len(list((root / "results" / "t").glob("*.ipynb"))) == 4  # executed copies next to the logs
    return root / "results" / "t"


def test_batch_run_skips_complete_pairs(batch_dir: Path, tmp_path: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in batch_dir.glob("*.jsonl")}
    assert batch.run("t", root=batch_dir.parent.parent, kernel="python3", progress=False)[0] == 0
    assert {p: p.stat().st_mtime_ns for p in batch_dir.glob("*.jsonl")} == before


def test_a_real_batch_measured_elsewhere_gets_its_notebooks_without_a_gpu(tmp_path: Path) -> None:
    """The seed's experiment runs as ``sloguard tune`` on a lent GPU, its logs carried back (issue #17): ``batch run``
    on a machine without a GPU executes each whole log's notebook (it measures nothing, so asks for no card), leaves
    the log as it was, and runs nothing again once the notebook is there. The log: the real 15-trial H100 study."""
    real = ROOT / "sloguard_lib" / "data" / "h100" / "study" / "qwen2-1.5b_h100-80gb_vllm_tba-tpe_seed42.jsonl"
    batch.plan("real", [42], ["tba-tpe"], budget=15, backend="vllm", model="qwen2-1.5b", gpu="h100-80gb",
               slo=SLO(500, 100), workload="concurrency=32,num_requests=128", root=tmp_path)
    (tmp_path / "results" / "real").mkdir(parents=True)
    log = tmp_path / "results" / "real" / real.name
    log.write_bytes(real.read_bytes())
    assert batch.run("real", root=tmp_path, kernel="python3", progress=False)[0] == 1
    assert log.read_bytes() == real.read_bytes()
    nb = nbformat.read(tmp_path / "results" / "real" / "tba-tpe_seed42.ipynb", as_version=4)
    shown = "".join(str(o.get("data", {}).get("text/plain", "")) + o.get("text", "") for c in nb.cells
                    for o in c.get("outputs", []))
    assert "'max_num_batched_tokens': 6477" in shown and "6642.49" in shown  # its recommendation, trial 10
    assert batch.run("real", root=tmp_path, kernel="python3", progress=False)[0] == 0


def test_analysis_notebook_and_report_agree(batch_dir: Path, tmp_path: Path) -> None:
    nb = _execute("analysis", tmp_path, results_dir=str(batch_dir), figures_dir=str(tmp_path / "figs"))
    assert not any(o.get("output_type") == "error" for c in nb.cells for o in c.get("outputs", []))
    summary = json.loads((batch_dir / "summary.json").read_text())
    assert summary.pop("identity")["budget"] == "3"
    assert summary.pop("incomplete") == []  # both runs have their 3 trials
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
    assert main(["batch", "run", "--name", "never-planned"]) == 2


def test_tune_notebook_writes_log_and_resumes(tmp_path: Path) -> None:
    params = {"budget": 2, "workload": SMALL, "out_dir": str(tmp_path), "optimizer": "tpe"}
    _execute("tune", tmp_path, **params)
    nb = _execute("tune", tmp_path, **(params | {"budget": 3}))
    log = next(tmp_path.glob("*.jsonl"))
    assert [t["trial"] for t in read_log(log).trials] == [0, 1, 2]
    assert any("crash waste" in o.get("text", "") for c in nb.cells for o in c.get("outputs", []))


def test_tune_notebook_takes_early_stop_and_validation(tmp_path: Path) -> None:
    _execute("tune", tmp_path, budget=4, workload=SMALL, out_dir=str(tmp_path), early_stop=True, validate=1)
    log = next(tmp_path.glob("*.jsonl"))
    contents = read_log(log)
    assert contents.header["early_stop"] is True and contents.header["validate"] == 1
    assert [t["phase"] for t in contents.trials][4:] == ["validate"] * (len(contents.trials) - 4) != []


def test_quickstart_notebook_runs_without_gpu(tmp_path: Path) -> None:
    nb = _execute("quickstart", tmp_path, source=None, budget=3, workload=SMALL, out_dir=str(tmp_path))
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "backend: sim" in text
    assert any("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


def test_inspector_widget_shows_a_crash(tmp_path: Path) -> None:
    from sloguard_lib.analysis.widgets import TrialInspector
    from sloguard_lib.measure.workload import workload_from
    from sloguard_lib.study.runner import StudySpec, run_study

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


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package as a user gets it: a wheel built from this checkout (notebooks and H100 data inside)."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(ROOT)], check=True, capture_output=True, timeout=300)
    return next(out.glob("sloguard-*.whl"))


@pytest.mark.slow
def test_quickstart_from_an_empty_folder_installs_the_wheel_into_a_fresh_kernel(wheel: Path, tmp_path: Path) -> None:
    """Colab's situation: an empty /content, a kernel that never saw the package, `source` naming what to install.
    Before: StopIteration looking for pyproject.toml, then ModuleNotFoundError until a kernel restart."""
    venv = tmp_path / "kernel-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    # the kernel finds this machine's third-party packages (numpy, ipykernel, ...) on a plain path entry, but not
    # sloguard: an editable install is wired in through .pth files, which a path entry does not run
    site_dir = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True).stdout.strip()
    system_site = next(p for p in sys.path if p.endswith("site-packages"))
    Path(site_dir, "host_packages.pth").write_text(system_site + "\n")
    probe = subprocess.run([str(python), "-c", "import sloguard_lib"], capture_output=True, text=True, cwd=tmp_path)
    assert probe.returncode != 0 and "No module named 'sloguard_lib'" in probe.stderr
    kernels = tmp_path / "jupyter" / "kernels" / "fresh"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"], "display_name": "fresh",
        "language": "python"}))
    empty = tmp_path / "content"
    empty.mkdir()
    out = empty / "quickstart.out.ipynb"
    env = {"JUPYTER_PATH": str(tmp_path / "jupyter"), "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        pm.execute_notebook(str(NOTEBOOK_DIR / "quickstart.ipynb"), str(out),
                            parameters={"source": str(wheel), "budget": 3, "workload": SMALL}, cwd=str(empty),
                            kernel_name="fresh", progress_bar=False)
    nb = nbformat.read(out, as_version=4)
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert f"from {site_dir}/sloguard_lib" in text  # the wheel's copy, not the checkout's
    assert "backend: sim" in text and "best config (trial" in text
    assert list((empty / "results" / "quickstart_notebook").glob("*.jsonl"))
    # the wheel carries what other commands need: the batch notebook and the replay data
    check = subprocess.run([str(python), "-c", "from sloguard_lib.study import batch; "
                            "from sloguard_lib.engine.replay import default_data; "
                            "assert batch.TUNE_NOTEBOOK.is_file(); "
                            "assert all(p.is_file() for p in default_data()) and len(default_data()) == 2"],
                           capture_output=True, text=True, cwd=empty)
    assert check.returncode == 0, check.stderr
