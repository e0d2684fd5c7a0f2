from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from sloguard_lib.errors import InputError
from sloguard_lib.measure.slo import SLO
from sloguard_lib.measure.workload import Workload
from sloguard_lib.study.incumbent import incumbent
from sloguard_lib.study.runner import StudySpec, log_path_for, run_study
from sloguard_lib.study.trial_log import read_log

#: fields that legitimately differ between runs: wall-clock (a resumed sim rebuilds its compile cache, so start
#: times and GPU-seconds must match)
VOLATILE = {"wall_s", "finished"}


def stable(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in t.items() if k not in VOLATILE} for t in trials]


def spec(optimizer: str = "tpe", budget: int = 8, slo: SLO | None = None, num_requests: int = 64) -> StudySpec:
    return StudySpec(model="qwen2-1.5b", gpu="a100-40gb", optimizer=optimizer, seed=3, budget=budget,
                     slo=slo or SLO(500, 100), workload=Workload(concurrency=16, num_requests=num_requests))


@pytest.mark.parametrize("optimizer", ["random", "tpe"])
def test_resume_continues_exactly(tmp_path: Path, optimizer: str) -> None:
    full = run_study(spec(optimizer), tmp_path / "full")
    run_study(spec(optimizer, budget=3), tmp_path / "part")
    resumed = run_study(spec(optimizer), tmp_path / "part", resume=True)
    assert resumed.resumed_from == 3
    assert stable(resumed.trials) == stable(full.trials)
    assert [t["trial"] for t in read_log(resumed.log_path).trials] == list(range(8))
    assert full.counts()["ok"] >= 1 and full.best is not None


def test_existing_log_needs_resume_and_matching_header(tmp_path: Path) -> None:
    run_study(spec(budget=2), tmp_path)
    with pytest.raises(InputError, match="already exists: pass --resume"):
        run_study(spec(budget=2), tmp_path)
    # the message names the one field that differs, not the whole header
    with pytest.raises(InputError, match=r"its slo.ttft_p99_ms is 500, this run asks for 400 \(a different study"):
        run_study(spec(budget=3, slo=SLO(400, 100)), tmp_path, resume=True)
    with pytest.raises(InputError, match="already holds 2 trials, more than the budget of 1"):
        run_study(spec(budget=1), tmp_path, resume=True)


def test_extending_the_budget_is_recorded_and_read_back(tmp_path: Path) -> None:
    first = run_study(spec(budget=2), tmp_path)
    assert first.header["budget"] == 2
    longer = run_study(spec(budget=4), tmp_path, resume=True)
    assert longer.header["budget"] == 4 and len(longer.trials) == 4  # it said 2 after an extension
    lines = [json.loads(x) for x in longer.log_path.read_text().splitlines()]
    assert [r["kind"] for r in lines] == ["study", "trial", "trial", "extend", "trial", "trial"]
    assert lines[0]["budget"] == 2 and lines[3] | {"time": None} == {
        "kind": "extend", "budget": 4, "trials_done": 2, "time": None}


def test_crashes_are_logged_with_vllm_message(tmp_path: Path) -> None:
    s = StudySpec(model="llama-3.1-8b", gpu="l4-24gb", optimizer="random", seed=1, budget=10,
                  workload=Workload(concurrency=8, num_requests=32))
    result = run_study(s, tmp_path)
    crashes = [t for t in result.trials if t["status"] == "crash"]
    assert crashes, "the L4/8B space must contain crashing configs"
    for t in crashes:
        assert t["utility"] is None and t["crash_class"] == "kv_insufficient"
        assert "memory" in t["crash_message"].lower()
        assert t["gpu_seconds"] > 20
    assert 0 < result.crash_waste < 1


def _tune_cmd(out: Path, budget: int, num_requests: int = 64) -> list[str]:
    return [sys.executable, "-m", "sloguard_lib.cli", "tune", "--model", "qwen2-1.5b", "--gpu", "a100-40gb",
            "--optimizer", "tpe", "--budget", str(budget), "--seed", "3", "--quiet", "--resume",
            "--workload", f"concurrency=16,num_requests={num_requests}", "--out", str(out)]


@pytest.mark.slow
def test_sigkill_at_random_points_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    budget, n = 12, 1500  # ~0.5 s per trial after ~0.7 s of start-up: kills land between and inside trials
    reference = run_study(spec(budget=budget, num_requests=n), tmp_path / "ref")
    out = tmp_path / "killed"
    rng = random.Random(0)
    kills = 0
    for attempt in range(40):
        proc = subprocess.Popen(_tune_cmd(out, budget, n), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:  # later runs live longer: where start-up alone takes ~2 s (seen in CI), no run got past trial 0
            proc.wait(timeout=rng.uniform(0.7, 1.8) * (1 + attempt / 8))
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            continue
        assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
        break
    else:
        pytest.fail("the study never finished")
    assert kills >= 2, "the test must actually interrupt the study"
    trials = read_log(log_path_for(out, spec(budget=budget, num_requests=n))).trials
    assert [t["trial"] for t in trials] == list(range(budget))
    assert stable(trials) == stable(json.loads(json.dumps(reference.trials, default=str)))


def test_cli_resume_after_torn_write(tmp_path: Path) -> None:
    budget = 4
    subprocess.run(_tune_cmd(tmp_path, 2), check=True, capture_output=True)
    log = log_path_for(tmp_path, spec(budget=budget))
    with open(log, "ab") as f:
        f.write(b'{"kind":"trial","trial":2,"sta')
    time.sleep(0.01)
    subprocess.run(_tune_cmd(tmp_path, budget), check=True, capture_output=True)
    assert [t["trial"] for t in read_log(log).trials] == [0, 1, 2, 3]
    assert log.with_suffix(".jsonl.torn").exists()


def test_stop_after_starts_no_new_trial_and_resume_finishes(tmp_path: Path) -> None:
    assert run_study(spec(budget=6), tmp_path, stop_after_s=0.0).trials == []
    partial = run_study(spec(budget=6), tmp_path, resume=True, stop_after_s=0.05)
    assert 1 <= len(partial.trials) < 6
    full = run_study(spec(budget=6), tmp_path, resume=True)
    assert [t["trial"] for t in full.trials] == list(range(6))


def test_enqueued_configs_run_first_are_told_and_pin_the_log(tmp_path: Path) -> None:
    base = spec("tba-tpe", budget=4)
    assert base.space is not None
    known = base.space.finalize({"quantization": "fp16", "max_num_seqs": 64, "max_num_batched_tokens": 4096,
                                 "gpu_memory_utilization": 0.9, "max_model_len": 2048, "enforce_eager": False,
                                 "enable_chunked_prefill": True, "enable_prefix_caching": True})
    queued = StudySpec(**{**base.__dict__, "enqueue": (known,)})
    trials = run_study(queued, tmp_path).trials
    assert trials[0]["phase"] == "enqueued" and trials[0]["params"] == known
    assert trials[0]["status"] == "ok" and trials[0]["metrics"]["goodput_tok_s"] > 1000
    assert [t["phase"] for t in trials[1:]] == ["tba-explore"] * 3
    with pytest.raises(InputError, match="its enqueue is"):  # the queue is part of the study's identity
        run_study(StudySpec(**{**base.__dict__, "budget": 5}), tmp_path, resume=True)
    with pytest.raises(InputError, match=r"enqueued config 1: knob 'max_num_seqs': value 4096 outside"):
        StudySpec(**{**base.__dict__, "space": None, "enqueue": (known | {"max_num_seqs": 4096},)})


def test_cli_enqueue_errors_name_the_problem(tmp_path: Path) -> None:
    from sloguard_lib.cli import main

    base = ["tune", "--backend", "sim", "--optimizer", "random", "--budget", "1", "--out", str(tmp_path), "--quiet"]
    assert main([*base, "--enqueue", "{not json"]) == 2
    assert main([*base, "--enqueue", str(tmp_path / "missing.yaml")]) == 2
    bad = tmp_path / "q.yaml"
    bad.write_text("- 3\n")
    assert main([*base, "--enqueue", str(bad)]) == 2
    assert not list(tmp_path.glob("*.jsonl"))  # nothing was started


def test_incumbent_averages_a_config_measured_twice() -> None:
    def t(seqs: int, status: str, utility: float | None) -> dict[str, Any]:
        return {"config": {"max_num_seqs": seqs}, "status": status, "utility": utility}

    lucky_twice = [t(1, "ok", 120.0), t(1, "slo_violation", 20.0)]  # met the SLO once by luck: mean 70
    trials = [*lucky_twice, t(2, "ok", 90.0), t(2, "ok", 70.0), t(3, "ok", 84.0), t(4, "crash", None),
              t(5, "slo_violation", 500.0)]  # never met the SLO: not a recommendation, however fast
    best = incumbent(trials)
    assert best is not None
    assert (best["config"], best["utility"], best["measurements"], best["mean_utility"]) == (
        {"max_num_seqs": 3}, 84.0, 1, 84.0)  # not 1 (best draw 120, mean 70), not 2 (90 and 70)
    again = incumbent([*trials, t(2, "ok", 100.0)])  # a third load lifts 2's mean to 86.7
    assert again is not None
    assert (again["config"], again["utility"], again["measurements"]) == ({"max_num_seqs": 2}, 100.0, 3)
    assert again["mean_utility"] == pytest.approx(260 / 3)
    assert incumbent([t(4, "crash", None), t(5, "slo_violation", 9.0)]) is None


@pytest.mark.parametrize("resume", [False, True])
def test_a_header_cut_short_starts_the_study_afresh(tmp_path: Path, resume: bool) -> None:
    """Issue #24 F9: killed while writing its header, a study was refused with and without --resume."""
    path = log_path_for(tmp_path, spec(budget=2))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b'{"kind":"study","schema":1,"study_id":"qwen2')
    result = run_study(spec(budget=2), tmp_path, resume=resume)
    assert [t["trial"] for t in result.trials] == [0, 1]
    assert path.with_suffix(".jsonl.torn").read_bytes() == b'{"kind":"study","schema":1,"study_id":"qwen2\n'


def test_a_full_disk_stops_the_study_with_the_record_in_the_error(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue #24 F8: ENOSPC mid-study was a traceback that lost the measured trial."""
    import errno

    from sloguard_lib.study.trial_log import TrialLog

    append = TrialLog.append_trial
    calls = []

    def full_after_one(self: TrialLog, record: dict[str, Any]) -> None:
        calls.append(record["trial"])
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        append(self, record)

    monkeypatch.setattr(TrialLog, "append_trial", full_after_one)
    with pytest.raises(InputError, match=r"cannot append trial 1 .*No space left on device.*Its record: \{") as err:
        run_study(spec(budget=3), tmp_path)
    assert '"trial": 1' in str(err.value) and '"config": {' in str(err.value)
    assert [t["trial"] for t in read_log(log_path_for(tmp_path, spec(budget=3))).trials] == [0]
    monkeypatch.setattr(TrialLog, "append_trial", append)
    resumed = run_study(spec(budget=3), tmp_path, resume=True)
    assert [t["trial"] for t in resumed.trials] == [0, 1, 2]


def test_the_goodput_definition_picks_the_utility_and_both_are_recorded(tmp_path: Path) -> None:
    """Strict ITL SLO on the sim: the per-request ITL p99 fails requests whose TPOT passes, so the two goodputs
    differ, and each study maximises its own."""
    slo = SLO(2000, 30)
    wl = Workload(concurrency=32, num_requests=64)
    ours = run_study(StudySpec("qwen2-1.5b", "a100-40gb", "random", seed=4, budget=6, slo=slo, workload=wl),
                     tmp_path / "a").trials
    theirs = run_study(StudySpec("qwen2-1.5b", "a100-40gb", "random", seed=4, budget=6,
                                 slo=SLO(2000, 30, goodput_def="vllm"), workload=wl), tmp_path / "b").trials
    ran = [(a, b) for a, b in zip(ours, theirs, strict=True) if a["metrics"]]
    assert ran and all(a["config"] == b["config"] for a, b in ran)
    for a, b in ran:
        assert a["metrics"]["goodput_tok_s"] == a["metrics"]["goodput_sloguard_tok_s"]
        assert b["metrics"]["goodput_tok_s"] == b["metrics"]["goodput_vllm_tok_s"]
        assert b["metrics"]["goodput_vllm_tok_s"] >= a["metrics"]["goodput_sloguard_tok_s"]  # TPOT <= the ITL p99
    assert any(b["metrics"]["goodput_vllm_tok_s"] > a["metrics"]["goodput_sloguard_tok_s"] for a, b in ran)
    with pytest.raises(InputError, match="goodput definition 'mine'"):
        SLO(goodput_def="mine")
