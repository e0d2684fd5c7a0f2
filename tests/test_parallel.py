"""Trials side by side on Ray (local, on the CI's CPUs): the log's guarantees hold with several workers."""

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

from sloguard_lib.engine import SimEngine
from sloguard_lib.engine.reaper import start_time
from sloguard_lib.errors import InputError
from sloguard_lib.hardware import get_gpu, memory_prior, resolve_model
from sloguard_lib.optimizers import make_optimizer
from sloguard_lib.study.runner import Parallel, StudySpec, outcome_of, run_study
from sloguard_lib.study.space import config_key
from sloguard_lib.study.trial_log import read_log

pytest.importorskip("ray")

MODEL, GPU = "qwen2-1.5b", "a100-40gb"


def _replays_exactly(log: Path) -> None:
    """Every record was proposed by the optimizer the log rebuilds: a fresh one told the first ``told`` records
    (in log order), asked with the configs of the trials it names as ``pending``, proposes its params."""
    contents = read_log(log)
    header, recs = contents.header, contents.trials
    by_trial = {r["trial"]: r for r in recs}
    spec = StudySpec(MODEL, GPU, header["optimizer"], seed=header["seed"], budget=header["budget"])
    assert spec.space is not None
    prior = memory_prior(resolve_model(MODEL), get_gpu(GPU))
    for rec in recs:
        opt = make_optimizer(spec.optimizer, spec.space, spec.seed, budget=spec.budget, prior=prior)
        for earlier in recs[:rec["told"]]:
            opt.tell(earlier["params"], outcome_of(earlier))
        assert opt.ask([by_trial[n]["params"] for n in rec["pending"]]).params == rec["params"], rec["trial"]


def _check_complete(log: Path, budget: int) -> list[dict[str, Any]]:
    recs = read_log(log).trials
    assert sorted(r["trial"] for r in recs) == list(range(budget)), "a trial lost or duplicated"
    keys = [config_key(r["params"]) for r in recs if r["phase"] != "confirm"]  # tba-tpe re-measures on purpose
    assert len(set(keys)) == len(keys), "a config ran twice"
    return recs


def test_a_two_worker_study_logs_each_trial_once_and_replays_exactly(tmp_path: Path) -> None:
    spec = StudySpec(MODEL, GPU, "tba-tpe", seed=3, budget=12)
    result = run_study(spec, tmp_path, parallel=Parallel(workers=2))
    recs = _check_complete(result.log_path, 12)
    assert all(r["status"] in ("ok", "slo_violation") for r in recs)
    assert max(len(r["pending"]) for r in recs) == 1  # two in flight: each ask saw the other one
    assert all(r["told"] <= i for i, r in enumerate(recs))  # told only what was logged before it
    assert all(r["worker"]["pid"] != os.getpid() for r in recs)
    _replays_exactly(result.log_path)


def test_a_worker_that_dies_mid_trial_is_retried_on_another_and_is_not_a_crash(tmp_path: Path) -> None:
    marker = tmp_path / "died"

    class DiesOnce(SimEngine):  # defined here, so Ray ships it by value to its workers
        def launch(self, config: Any, *, trial_seed: int, label: str = "") -> Any:
            if label == "trial003" and not marker.exists():
                marker.write_text(str(os.getpid()))
                os._exit(1)  # the worker's process dies mid-trial (a lost node looks the same to the driver)
            return super().launch(config, trial_seed=trial_seed, label=label)

    def make() -> SimEngine:
        return DiesOnce(resolve_model(MODEL), get_gpu(GPU))

    spec = StudySpec(MODEL, GPU, "tba", seed=5, budget=8)
    result = run_study(spec, tmp_path / "runs", parallel=Parallel(workers=2, make_engine=make))
    recs = {r["trial"]: r for r in _check_complete(result.log_path, 8)}
    assert marker.exists()
    assert recs[3]["status"] in ("ok", "slo_violation") and recs[3]["worker_attempts"] == 2
    assert recs[3]["worker"]["pid"] != int(marker.read_text())
    assert all("worker_attempts" not in r for n, r in recs.items() if n != 3)


def _ray_processes_alive(pid_file: Path) -> list[int]:
    rows = [line.split() for line in pid_file.read_text().splitlines()[1:]]
    return [int(p) for p, started in rows if start_time(int(p)) == started]


@pytest.mark.parametrize("attempt", range(2))
def test_sigkill_of_the_driver_loses_nothing_and_leaves_no_ray_process(tmp_path: Path, attempt: int) -> None:
    budget = 80
    cmd = [sys.executable, "-m", "sloguard_lib.cli", "tune", "--backend", "sim", "--model", MODEL, "--gpu", GPU,
           "--optimizer", "tba", "--seed", str(attempt), "--budget", str(budget), "--workers", "2",
           "--out", str(tmp_path), "--quiet", "--resume"]
    log = tmp_path / f"{MODEL}_{GPU}_sim_tba_seed{attempt}.jsonl"
    pid_file = tmp_path / "server_logs" / log.stem / "ray_local.pids"
    kill_after = random.Random(attempt).randint(3, 40)  # records logged before the kill
    driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and driver.poll() is None:
        if log.exists() and len(read_log(log).trials) >= kill_after:
            break
        time.sleep(0.05)
    if driver.poll() is not None:
        pytest.fail(f"the study ended before the kill: {driver.stderr.read()[-2000:] if driver.stderr else ''}")
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    logged = len(read_log(log).trials)
    assert kill_after <= logged < budget
    assert _ray_processes_alive(pid_file), "Ray's agents outlive a SIGKILLed driver: the case the reaper is for"
    recorded = pid_file.read_text()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (tmp_path / "old.pids").write_text(recorded)
    assert _ray_processes_alive(tmp_path / "old.pids") == []  # the resumed run ended what the killed one left
    _check_complete(log, budget)
    _replays_exactly(log)
    assert json.loads(log.read_text().splitlines()[0])["budget"] == budget


def test_a_worker_that_cannot_build_its_engine_stops_the_study_in_one_line(tmp_path: Path) -> None:
    def make() -> SimEngine:
        raise RuntimeError("vllm is not installed on this node")

    spec = StudySpec(MODEL, GPU, "random", seed=1, budget=4)
    with pytest.raises(InputError, match="could not build its engine: .*vllm is not installed on this node"):
        run_study(spec, tmp_path, parallel=Parallel(workers=2, make_engine=make))
    assert read_log(tmp_path / f"{spec.study_id}.jsonl").trials == []
