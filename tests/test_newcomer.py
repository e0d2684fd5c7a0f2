"""A newcomer's first hour: every way the first contact failed before, as a test (sim, stubs; no GPU, no vLLM).

Each test names what the user saw before the fix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import matplotlib
import matplotlib.colors
import matplotlib.figure
import pytest
import yaml

from sloguard_lib.analysis import report
from sloguard_lib.cli import main
from sloguard_lib.engine import placement
from sloguard_lib.engine.base import EngineCrash
from sloguard_lib.engine.sim import SimEngine
from sloguard_lib.engine.vllm import VllmEngine
from sloguard_lib.errors import InputError
from sloguard_lib.hardware import get_gpu, resolve_model
from sloguard_lib.measure.slo import SLO
from sloguard_lib.measure.workload import Workload
from sloguard_lib.study import batch
from sloguard_lib.study.runner import StudySpec, run_study
from sloguard_lib.study.trial_log import exclusive, read_log

ROOT = Path(__file__).resolve().parent.parent
SMALL = "concurrency=16,num_requests=32,input_len=256,output_len=64"


def cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sloguard_lib.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


def fake_nvidia_smi(tmp_path: Path, name: str) -> dict[str, str]:
    """A PATH on which ``nvidia-smi`` answers like a machine with this GPU."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    smi = bin_dir / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\ncase \"$*\" in *memory.total*) echo 23034;; *) echo '{name}';; esac\n")
    smi.chmod(0o755)
    return os.environ | {"PATH": f"{bin_dir}:{os.environ['PATH']}"}


# ---------------------------------------------------------------- a GPU box, and which card records name

def test_make_tune_on_a_gpu_machine_runs_the_simulated_study(tmp_path: Path) -> None:
    """Before: `error: the vllm backend needs vLLM` (nvidia-smi answered, so the default backend was vllm)."""
    env = fake_nvidia_smi(tmp_path, "NVIDIA L4")
    done = subprocess.run(["make", "-s", "-C", str(ROOT), "tune", f"PY={sys.executable}"], capture_output=True,
                          text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "tpe on sim: Qwen/Qwen2-1.5B / a100-40gb" in done.stdout and "best config" in done.stdout


def test_vllm_backend_names_the_card_it_runs_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: records of CPU-vLLM runs said a100-40gb, and --gpu a100-40gb on an L4 was taken at its word."""
    monkeypatch.setenv("PATH", "/nonexistent")
    assert placement("vllm", None) == ("vllm", "cpu")
    assert placement("sim", None) == ("sim", "a100-40gb")
    with pytest.raises(InputError, match="no GPU"):
        placement("vllm", "a100-40gb")
    monkeypatch.setenv("PATH", fake_nvidia_smi(tmp_path, "NVIDIA L4")["PATH"])
    assert placement("vllm", None) == ("vllm", "l4-24gb")
    assert placement("sim", "h100-80gb") == ("sim", "h100-80gb")
    with pytest.raises(InputError, match=r"--gpu a100-40gb: the vllm backend measures the card it runs on, and "
                                         r"this machine has NVIDIA L4 \(l4-24gb\)"):
        placement("vllm", "a100-40gb")


# ---------------------------------------------------------------- the vllm backend, with a stand-in server

@pytest.fixture
def stub_vllm(tmp_path: Path) -> dict[str, str]:
    """``python -m vllm.entrypoints.openai.api_server`` resolving to the stand-in server of the launcher tests."""
    pkg = tmp_path / "fakevllm" / "vllm" / "entrypoints" / "openai"
    pkg.mkdir(parents=True)
    for d in (pkg, pkg.parent, pkg.parent.parent):
        (d / "__init__.py").write_text("")
    (pkg / "api_server.py").write_text(f"import sys\nsys.path.insert(0, {str(ROOT)!r})\n"
                                       "from tests.openai_stub_server import main\nmain()\n")
    return os.environ | {"SLOGUARD_VLLM_PYTHON": sys.executable, "PYTHONPATH": str(tmp_path / "fakevllm"),
                         "SLOGUARD_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}


def test_server_logs_live_under_out_per_study_and_trial(tmp_path: Path, stub_vllm: dict[str, str]) -> None:
    """Before: ./results/server_logs/trial001_port*.log, outside --out, numbering restarting per run."""
    args = ["tune", "--backend", "vllm", "--model", "tiny-qwen2", "--optimizer", "random", "--budget", "1",
            "--workload", "concurrency=2,num_requests=4,input_len=16,output_len=8", "--out", "runs", "--quiet",
            "--slo-ttft-p99", "5000", "--slo-itl-p99", "5000"]
    first = cli(*args, cwd=tmp_path, env=stub_vllm)
    assert first.returncode == 0, first.stderr[-2000:]
    again = cli(*[a if a != "1" else "2" for a in args], "--resume", cwd=tmp_path, env=stub_vllm)
    assert again.returncode == 0, again.stderr[-2000:]
    study = "tiny-qwen2_cpu_vllm_random_seed42"
    logs = sorted(p.name for p in (tmp_path / "runs" / "server_logs" / study).iterdir())
    # each trial's server log, and its load's token timeline beside it (named in the record)
    assert [re.sub(r"port\d+", "portN", n) for n in logs] == [
        "trial000_portN.load0.npz", "trial000_portN.log", "trial001_portN.load0.npz", "trial001_portN.log"]
    trials = read_log(tmp_path / "runs" / f"{study}.jsonl").trials
    assert [t["gpu"] for t in trials] == ["cpu", "cpu"]
    assert sorted(n for t in trials for n in t["engine_info"]["timelines"]) == [n for n in logs if n.endswith(".npz")]
    assert not (tmp_path / "results").exists()


def test_synthetic_tokenizer_copy_is_keyed_by_config_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: two folders named tiny-qwen2 (one edited to 7 layers) were served from one stale 2-layer copy."""
    monkeypatch.setenv("SLOGUARD_CACHE", str(tmp_path / "cache"))
    dirs = []
    for layers in (2, 7):
        folder = tmp_path / f"v{layers}" / "tiny-qwen2"
        folder.mkdir(parents=True)
        config = json.loads((ROOT / "sloguard_lib" / "models" / "tiny-qwen2" / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps(config | {"num_hidden_layers": layers}))
        served = VllmEngine(resolve_model(str(folder)), get_gpu("cpu"), vllm_cmd=["true"],
                            log_dir=tmp_path / "logs")._servable_dir()
        dirs.append(served)
        assert json.loads((served / "config.json").read_text())["num_hidden_layers"] == layers
    assert dirs[0] != dirs[1]


# ---------------------------------------------------------------- stopping, and two writers

def test_ctrl_c_on_a_sim_study_says_how_to_resume(tmp_path: Path) -> None:
    """Before: a KeyboardInterrupt traceback."""
    log = tmp_path / "qwen2-1.5b_a100-40gb_sim_random_seed42.jsonl"
    for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)):
        before = len(read_log(log).trials) if log.exists() else 0
        proc = subprocess.Popen([sys.executable, "-m", "sloguard_lib.cli", "tune", "--budget", "400", "--optimizer",
                                 "random", "--out", str(tmp_path), "--resume", "--workload", SMALL],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (log.exists() and len(read_log(log).trials) >= before + 2):
            time.sleep(0.05)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == code, err[-2000:]
        saved = len(read_log(log).trials)
        assert f"interrupted: {saved} trials saved in {log}" in err and "--resume" in err
        assert "Traceback" not in err
    trials = read_log(log).trials
    assert [t["trial"] for t in trials] == list(range(len(trials)))


def test_a_second_writer_is_refused_naming_the_lock_holder(tmp_path: Path) -> None:
    """Before: two `tune --resume` on one study wrote 40 lines for 20 trials."""
    spec = StudySpec(model="qwen2-1.5b", gpu="a100-40gb", optimizer="random", budget=2,
                     workload=Workload(concurrency=8, num_requests=16))
    log = tmp_path / f"{spec.study_id}.jsonl"
    with exclusive(log), pytest.raises(InputError, match=rf"being written by another sloguard \(lock held by pid "
                                                            rf"{os.getpid()}\)"):
        run_study(spec, tmp_path, resume=True)
    assert len(run_study(spec, tmp_path, resume=True).trials) == 2  # released


# ---------------------------------------------------------------- batches and reports keyed by identity

def _plan(root: Path, budget: int, **kw: object) -> list[Path]:
    args: dict[str, object] = dict(budget=budget, backend="sim", model="qwen2-1.5b", gpu="a100-40gb",
                                   slo=SLO(500, 100), workload=SMALL, root=root) | kw
    return batch.plan("b", [1, 2], ["random"], **args)  # type: ignore[arg-type]


def test_batch_plan_never_silently_rewrites_a_different_plan(tmp_path: Path) -> None:
    """Before: `batch plan --budget 6` rewrote 4 committed YAMLs (15 -> 6) and kept 6 old ones."""
    files = _plan(tmp_path, 3)
    assert _plan(tmp_path, 3) == files  # the same plan again: a no-op
    with pytest.raises(InputError, match="already holds a different plan .* --replace"):
        _plan(tmp_path, 6)
    _plan(tmp_path, 6, replace=True)
    assert {yaml.safe_load(f.read_text())["budget"] for f in files} == {6}
    nested = batch.plan("h100/multiseed", [1], ["random"], budget=2, backend="sim", model="qwen2-1.5b",
                        gpu="a100-40gb", slo=SLO(500, 100), workload=SMALL, root=tmp_path)
    assert nested == [tmp_path / "papermill_params" / "h100" / "multiseed" / "random_seed1.yaml"]
    assert yaml.safe_load(nested[0].read_text())["out_dir"] == "results/h100/multiseed"
    for bad in ("../../x", "/abs", "", "a/", "a//b", "a/../b"):
        with pytest.raises(InputError, match="batch name"):
            batch.plan(bad, [1], ["random"], budget=2, backend="sim", model="qwen2-1.5b", gpu="a100-40gb",
                       slo=SLO(500, 100), workload=SMALL, root=tmp_path)
    with pytest.raises(InputError, match="budget must be 1..100000"):
        _plan(tmp_path, 0, replace=True)


def test_batch_run_refuses_stale_and_foreign_logs(tmp_path: Path) -> None:
    """Before: `batch run` printed "10 study logs complete" in 0.9 s and ran nothing (old 15-trial logs)."""
    _plan(tmp_path, 3)
    pairs = batch.load_pairs(tmp_path / "papermill_params" / "b")
    assert pairs[0].root == tmp_path.resolve() and pairs[0].out_dir == tmp_path.resolve() / "results" / "b"
    # a 5-trial log of the same study: more trials than the plan's budget
    run_study(dataclasses.replace(pairs[0].spec, budget=5), pairs[0].out_dir)
    with pytest.raises(InputError, match="already holds 5 trials, more than the budget of 3"):
        batch.check(pairs)
    pairs[0].log_path.unlink()
    # a log of another study in the batch's folder
    other = StudySpec(model="qwen2-1.5b", gpu="l4-24gb", optimizer="random", seed=9, budget=1,
                      workload=Workload(concurrency=16, num_requests=32, input_len=256, output_len=64))
    run_study(other, pairs[0].out_dir)
    with pytest.raises(InputError, match=r"holds 1 study log\(s\) that are not in this plan"):
        batch.check(pairs)


def test_parameter_files_cannot_run_code(tmp_path: Path) -> None:
    """Before: a YAML key such as "a=1;__import__('os').system('touch marker');b" ran in the notebook."""
    _plan(tmp_path, 2)
    f = next((tmp_path / "papermill_params" / "b").glob("*.yaml"))
    params = yaml.safe_load(f.read_text())
    f.write_text(yaml.safe_dump(params | {"a=1;__import__('os').system('touch marker');b": 2}))
    with pytest.raises(InputError, match="unknown parameter \"a=1;__import__"):
        batch.run("b", root=tmp_path, progress=False)
    f.write_text(yaml.safe_dump(params | {"out_dir": "../../elsewhere"}))
    with pytest.raises(InputError, match="must be a folder under the project"):
        batch.load_pairs(f.parent)
    assert not (tmp_path / "marker").exists()


def _study(out: Path, gpu: str, seed: int, optimizer: str = "random") -> None:
    run_study(StudySpec(model="qwen2-1.5b", gpu=gpu, optimizer=optimizer, seed=seed, budget=3,
                        workload=Workload(concurrency=16, num_requests=32, input_len=256, output_len=64)), out)


def test_report_refuses_to_pool_different_studies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before: an A100 and an L4 study of one seed were merged into one comparison with p-values."""
    for seed in (1, 2):
        _study(tmp_path, "a100-40gb", seed)
        _study(tmp_path, "a100-40gb", seed, "tba-tpe")
    _study(tmp_path, "h100-80gb", 1)
    (tmp_path / "calibration.jsonl").write_text('{"config": {}, "status": "ok"}\n')  # not a study log: skipped
    assert main(["report", "--results-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "mixes studies of different gpu (a100-40gb: 4 logs, h100-80gb: 1 logs)" in err
    assert "--where gpu=a100-40gb" in err
    assert main(["report", "--results-dir", str(tmp_path), "--where", "gpu=a100-40gb"]) == 0
    out = capsys.readouterr().out
    assert "qwen2-1.5b on a100-40gb (sim)" in out and "Fast-cluster trials" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["identity"]["gpu"] == "a100-40gb" and summary["optimizers"]["random"]["n_seeds"] == 2
    assert summary["incomplete"] == [] and "incomplete" not in out
    # figures go beside the results, not into the committed figures/multiseed/
    assert (tmp_path / "figures" / "best_so_far.png").exists()
    first = (tmp_path / "figures" / "best_so_far.png").read_bytes()
    assert main(["report", "--results-dir", str(tmp_path), "--where", "gpu=a100-40gb"]) == 0
    assert (tmp_path / "figures" / "best_so_far.png").read_bytes() == first  # seeded bootstrap CIs
    assert main(["report", "--results-dir", str(tmp_path), "--where", "gpu=a100-40gb", "--baseline", "bogus"]) == 2
    assert "baseline 'bogus' is not among the optimizers here: random, tba-tpe" in capsys.readouterr().err
    # a batch read while it still runs: the short run is named, in the summary too
    log = next(tmp_path.glob("*a100-40gb*tba-tpe*seed2.jsonl"))
    log.write_text("".join(log.read_text().splitlines(keepends=True)[:-1]))  # its last trial not yet run
    assert main(["report", "--results-dir", str(tmp_path), "--where", "gpu=a100-40gb"]) == 0
    assert "incomplete: tba-tpe seed 2 2/3 trials" in capsys.readouterr().out.replace("\n", " ")
    assert json.loads((tmp_path / "summary.json").read_text())["incomplete"] == [
        {"optimizer": "tba-tpe", "seed": 2, "trials": 2, "budget": 3}]


def test_crash_map_draws_crashes_red(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: seaborn's default palette made crashes green."""
    run_study(StudySpec(model="llama-3.1-8b", gpu="l4-24gb", optimizer="random", seed=1, budget=8,
                        workload=Workload(concurrency=8, num_requests=16)), tmp_path)
    df = report.load_trials(tmp_path)
    assert (df.status == "crash").any()
    saved: dict[str, matplotlib.figure.Figure] = {}
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda self, path, **kw: saved.__setitem__(Path(path).name, self))
    report.write_figures(df, report.per_run(df), tmp_path / "f")
    legend = saved["crash_map.png"].axes[0].get_legend()
    assert legend is not None
    colours = {t.get_text(): matplotlib.colors.to_rgb(h.get_color())  # type: ignore[union-attr]
               for t, h in zip(legend.get_texts(), legend.legend_handles, strict=True)}
    assert colours["crash"] == pytest.approx(matplotlib.colors.to_rgb("tab:red"))
    assert colours["ok"] == pytest.approx(matplotlib.colors.to_rgb("tab:green"))


# ---------------------------------------------------------------- replay, sim, inspector

def test_fp8_on_an_a100_starts_like_vllm_0_26(tmp_path: Path) -> None:
    """Before: the sim refused fp8 on A100 with "Minimum capability: 89"; vLLM serves it weight-only (Marlin)."""
    workload = Workload(concurrency=8, num_requests=16)
    fp8 = SimEngine(resolve_model("qwen2-1.5b"), get_gpu("a100-40gb")).launch(
        {"quantization": "fp8", "max_model_len": 2048}, trial_seed=0)
    assert fp8.run_load(workload).requests[0].ok
    volta = dataclasses.replace(get_gpu("t4-16gb"), name="v100", capability=70)
    with pytest.raises(EngineCrash, match="fp8 is not supported for the current GPU. Minimum capability: 75. "
                                          "Current capability: 70."):
        SimEngine(resolve_model("qwen2-1.5b"), volta).launch({"quantization": "fp8"}, trial_seed=0)


def test_inspector_reads_study_logs_only(tmp_path: Path) -> None:
    """Before: inspect.ipynb's default folder failed on results/h100/calibration.jsonl (not a study log)."""
    from sloguard_lib.analysis.widgets import TrialInspector

    _study(tmp_path / "runs", "a100-40gb", 1)
    (tmp_path / "h100").mkdir()
    (tmp_path / "h100" / "calibration.jsonl").write_text('{"config": {"max_num_seqs": 8}, "status": "ok"}\n')
    inspector = TrialInspector(tmp_path)
    assert [Path(p).parent.name for p in inspector.study.options] == ["runs"]


# ---------------------------------------------------------------- the CLI's small print

@pytest.mark.parametrize(("args", "named"), [
    (["tune", "--range", "quantization=fp16,bogus"], "knob 'quantization': unknown choice 'bogus'"),
    (["tune", "--range", "max_num_seqs=8-64"], "write a range as LOW:HIGH (max_num_seqs=8:64)"),
    (["tune", "--seed", "-1"], "seed must be 0..4294967295"),
    (["tune", "--stop-after-s", "nan"], "--stop-after-s must be a positive number"),
    (["bench", "--backend", "sim", "--max-num-seqs", "0"], "--max-num-seqs must be >= 1, got 0"),
    (["bench", "--backend", "sim", "--max-num-seqs", "-5"], "--max-num-seqs must be >= 1, got -5"),
    (["bench", "--backend", "sim", "--gpu-memory-utilization", "1.5"], "must be in (0, 1], got 1.5"),
    (["bench", "--backend", "sim", "--gpu-memory-utilization", "nan"], "must be in (0, 1], got nan"),
    (["bench", "--backend", "sim", "--quantization", "int3"], "unknown choice 'int3'"),
])
def test_bad_values_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                                        named: str) -> None:
    out = ["--out", str(tmp_path)] if args[0] == "tune" else []
    assert main([*args, *out, "--gpu", "a100-40gb"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and named in err and err.count("\n") == 1, err
    assert not list(tmp_path.glob("*.jsonl"))


def test_broken_yaml_and_unwritable_out_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "space.yaml"
    bad.write_text("max_num_seqs: {low: 8\n  high: [\n")
    assert main(["tune", "--space", str(bad), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not valid YAML" in err and "at line" in err, err  # was 8 lines
    (tmp_path / "a_file").write_text("")
    assert main(["tune", "--out", str(tmp_path / "a_file" / "runs"), "--budget", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write the trial log in") and err.count("\n") == 1, err


def test_no_feasible_trial_names_the_closest_miss_and_binding_slo(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tune", "--gpu", "a100-40gb", "--optimizer", "random", "--budget", "3", "--seed", "3",
                 "--slo-itl-p99", "9", "--workload", SMALL, "--out", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    trials = read_log(next(tmp_path.glob("*.jsonl"))).trials
    assert not any(t["status"] == "ok" for t in trials)
    misses = [t for t in trials if t["status"] == "slo_violation"]
    closest = min(misses, key=lambda t: max(t["slo_usage"].values()))
    assert "none met the SLO" in out and f"trial {closest['trial']}:" in out
    assert "binding SLO" in out and "itl_p99" in out


def test_help_shows_defaults_and_bench_prints_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["tune", "--help"])
    assert "(default: 15)" in capsys.readouterr().out
    assert main(["bench", "--backend", "sim", "--gpu", "h100-80gb", "--max-model-len", "2048", "--workload",
                 "concurrency=4,num_requests=8"]) == 0
    out, err = capsys.readouterr()
    assert '"status": "ok"' in out and err == ""


def test_space_shows_whole_knob_names_and_the_workload_floor() -> None:
    done = cli("space", "--model", "qwen2-1.5b", "--gpu", "a100-40gb", "--workload", "input_len=3000,output_len=128",
               env=os.environ | {"COLUMNS": "80"})
    assert done.returncode == 0, done.stderr
    for knob in ("max_num_batched_tokens", "gpu_memory_utilization", "enable_chunked_prefill"):
        assert knob in done.stdout
    row = next(line for line in done.stdout.splitlines() if "max_model_len" in line)
    assert int(re.search(r"(\d+) –", row).group(1)) >= 3128  # type: ignore[union-attr]


def test_readme_and_docs_links_resolve() -> None:
    """Before: README cited shared/gpu/README.md, which is not in the repository."""
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text()
        for target in re.findall(r"\]\(([^)#\s]+)", text):
            if "://" not in target:
                assert (doc.parent / target).exists(), f"{doc.name} links to missing {target}"
        assert "shared/gpu" not in text, doc.name


def test_notebook_results_are_not_untracked_clutter() -> None:
    """Before: the quickstart run from its own folder left notebooks/results/... as untracked files."""
    paths = ["sloguard_lib/notebooks/results/quickstart_notebook/x.jsonl", "results/runs/x.jsonl",
             "results/runs/server_logs/s/trial000_port1.log", "results/multiseed/x.jsonl.lock"]
    done = subprocess.run(["git", "check-ignore", *paths], cwd=ROOT, capture_output=True, text=True)
    if done.returncode == 128:
        pytest.skip("not a git checkout")
    assert done.stdout.split() == paths


def test_a_sigkilled_run_leaves_a_server_that_the_next_run_ends(tmp_path: Path, stub_vllm: dict[str, str]) -> None:
    """SIGKILL runs no cleanup: the server (its own session) outlives us; the next run of the study reaps it
    before it launches anything (its pid file records the group and its start time)."""
    args = [sys.executable, "-m", "sloguard_lib.cli", "tune", "--backend", "vllm", "--model", "tiny-qwen2",
            "--optimizer", "random", "--budget", "1", "--out", str(tmp_path / "runs"), "--quiet", "--resume",
            "--workload", "concurrency=2,num_requests=4000,input_len=16,output_len=64",
            "--slo-ttft-p99", "5000", "--slo-itl-p99", "5000"]
    proc = subprocess.Popen(args, env=stub_vllm, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    folder = tmp_path / "runs" / "server_logs" / "tiny-qwen2_cpu_vllm_random_seed42"
    deadline = time.monotonic() + 120
    while not list(folder.glob("*.pid")) and time.monotonic() < deadline:
        time.sleep(0.05)
    pid_file = next(folder.glob("*.pid"))
    pgid = int(pid_file.read_text().split()[0])
    time.sleep(1.0)  # the load is running
    proc.kill()
    proc.wait()
    os.killpg(pgid, 0)  # still alive: nothing could end it
    # the same study again, told to start no trial: only what happens before the first one runs
    try:
        again = subprocess.run([*args, "--stop-after-s", "0.001"], env=stub_vllm, capture_output=True, text=True,
                               timeout=120)
        assert again.returncode == 0, again.stderr[-2000:]
        with pytest.raises(ProcessLookupError):
            os.killpg(pgid, 0)
        assert not pid_file.exists()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)  # never leave the stand-in running for the tests after this one


def test_the_reaper_spares_servers_whose_sloguard_still_runs(tmp_path: Path) -> None:
    """A second `tune` on a live study must not end the first one's server before its lock refuses it."""
    from sloguard_lib.engine import reaper

    # a server tree whose leader is gone and whose child was re-parented, like an orphaned `vllm serve`
    leader = subprocess.run(["setsid", "sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $$"], capture_output=True,
                            text=True, check=True)
    pgid = int(leader.stdout.split()[0])
    try:
        pid_file = tmp_path / "trial000_port1.pid"
        reaper.record(pid_file, pgid)  # written by this (live) process
        assert reaper.reap(tmp_path) == [] and reaper.group_alive(pgid) and pid_file.exists()
        fields = pid_file.read_text().split()
        pid_file.write_text(f"{fields[0]} {fields[1]} 999999999 0\n")  # its writer is gone: SIGKILLed
        assert reaper.reap(tmp_path, grace_s=1.0) == [pgid]
        assert not reaper.group_alive(pgid) and not pid_file.exists()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


def test_a_pid_file_is_seen_whole_or_not_at_all(tmp_path: Path) -> None:
    """The interrupt test (and the next run's reaper) read a pid file the moment it exists; CI once read it empty
    (the write truncates first). 2000 rewrites under a reader that never stops: it must only ever see four fields."""
    import threading

    from sloguard_lib.engine import reaper

    pid_file, done = tmp_path / "trial000_port1.pid", threading.Event()
    seen: set[int] = set()

    def read() -> None:
        while not done.is_set():
            with contextlib.suppress(FileNotFoundError):
                seen.add(len(pid_file.read_text().split()))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(2000):
            reaper.record(pid_file, os.getpid())
    finally:
        done.set()
        reader.join()
    assert seen == {4} and [p.name for p in tmp_path.iterdir()] == [pid_file.name]
