"""The replay backend on the committed real H100 data (results/h100)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from sloguard_lib.cli import main
from sloguard_lib.engine import EngineCrash, make_engine
from sloguard_lib.engine.replay import H100_DATA, ReplayEngine, quantile_samples
from sloguard_lib.errors import InputError
from sloguard_lib.hardware import get_gpu, resolve_model
from sloguard_lib.measure.slo import SLO
from sloguard_lib.measure.workload import Workload
from sloguard_lib.study.trial import evaluate

STUDY = next((H100_DATA / "study").glob("*.jsonl"))
STUDY_WORKLOAD = Workload(concurrency=32, num_requests=128)


def engine(data: list[Path] | None = None) -> ReplayEngine:
    return ReplayEngine(resolve_model("qwen2-1.5b"), get_gpu("h100-80gb"), data)


def recorded_trial(n: int) -> dict[str, object]:
    return [json.loads(line) for line in STUDY.read_text().splitlines()][n + 1]  # line 0 is the header


def test_exact_match_reproduces_the_recorded_trial() -> None:
    real = recorded_trial(10)
    rec = evaluate(engine(), real["config"], STUDY_WORKLOAD, SLO(500, 100), seed=3)  # type: ignore[arg-type]
    assert rec["engine_info"]["replay"]["load"]["match"] == "exact"
    assert rec["status"] == real["status"] == "ok"
    for k in ("ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms", "throughput_tok_s", "goodput_tok_s"):
        assert rec["metrics"][k] == pytest.approx(real["metrics"][k], rel=0.05), k  # type: ignore[index]
    assert rec["engine_start_s"] == pytest.approx(real["engine_start_s"])


def test_a_stricter_slo_is_judged_on_the_replayed_requests() -> None:
    real = recorded_trial(10)  # TTFT p99 234 ms, ITL p99 11.9 ms
    rec = evaluate(engine(), real["config"], STUDY_WORKLOAD, SLO(200, 100), seed=3)  # type: ignore[arg-type]
    assert rec["status"] == "slo_violation" and rec["violated"] == ["ttft_p99_ms"]
    assert 0 < rec["metrics"]["goodput_tok_s"] < 0.9 * rec["metrics"]["throughput_tok_s"]


def test_unrecorded_config_is_answered_by_its_nearest_neighbour_and_says_so() -> None:
    config = dict(recorded_trial(10)["config"])  # type: ignore[call-overload]
    config["max_num_seqs"] = 60  # recorded: 59
    rec = evaluate(engine(), config, STUDY_WORKLOAD, SLO(), seed=0)
    load = rec["engine_info"]["replay"]["load"]
    assert load["match"] == "nearest" and 0 < load["distance"] < 0.01
    assert load["recorded_config"]["max_num_seqs"] == 59


def test_recorded_startup_crash_is_replayed_with_its_class_and_cost() -> None:
    e = engine([H100_DATA / "calibration.jsonl"])
    with pytest.raises(EngineCrash) as info:
        e.launch({"gpu_memory_utilization": 0.03}, trial_seed=0)
    assert info.value.crash_class == "kv_insufficient"
    assert "No available memory for the cache blocks" in info.value.log_excerpt
    assert 80 < info.value.elapsed_s < 90  # the real failed start took 84 s


def test_unrecorded_workload_is_a_clear_error_listing_the_recorded_ones(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server = engine().launch({}, trial_seed=0)
    with pytest.raises(InputError, match=r"no recorded load of the workload .*recorded: .*concurrency=32"):
        server.run_load(Workload(concurrency=7, input_len=300))
    # the study refuses it before any trial (it used to exit 0 with every trial an 'error' record)
    code = main(["tune", "--backend", "replay", "--model", "qwen2-1.5b", "--gpu", "h100-80gb", "--budget", "3",
                 "--workload", "concurrency=7,input_len=300", "--out", str(tmp_path), "--quiet"])
    assert code == 2 and "no recorded load of the workload 'concurrency=7" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.jsonl"))


def test_bad_replay_data_is_named(tmp_path: Path) -> None:
    broken = tmp_path / "grid.jsonl"
    broken.write_text('{"name": "x"}\n{"status": "ok", \n')
    with pytest.raises(InputError, match=r"grid.jsonl' line 2 is not JSON"):
        engine([broken])
    with pytest.raises(InputError, match="does not exist"):
        engine([tmp_path / "missing.jsonl"])
    with pytest.raises(InputError, match="no recorded measurement of llama-3.1-8b"):
        make_engine("replay", resolve_model("llama-3.1-8b"), get_gpu("h100-80gb"))


def test_quantile_reconstruction_matches_recorded_percentiles_and_mean() -> None:
    m = {"ttft_p50_ms": 100.0, "ttft_p95_ms": 180.0, "ttft_p99_ms": 250.0, "ttft_mean_ms": 105.0}
    x = quantile_samples(m, "ttft", 500) * 1000
    assert np.percentile(x, [50, 95, 99]) == pytest.approx([100, 180, 250], rel=0.01)
    assert x.mean() == pytest.approx(105, rel=0.01)
    assert x.min() >= 0


def test_cli_tune_on_replayed_real_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["tune", "--backend", "replay", "--data", str(H100_DATA / "calibration.jsonl"), "--data",
                 str(STUDY), "--model", "qwen2-1.5b", "--gpu", "h100-80gb", "--optimizer", "tba-tpe", "--budget", "8",
                 "--workload", "concurrency=32,num_requests=128", "--out", str(tmp_path), "--quiet"])
    assert code == 0
    trials = [json.loads(line) for line in next(tmp_path.glob("*.jsonl")).read_text().splitlines()][1:]
    assert len(trials) == 8 and all(t["backend"] == "replay" for t in trials)
    assert all(t["engine_info"]["replay"]["load"]["match"] in ("exact", "nearest") for t in trials)
    best = max(t["metrics"].get("goodput_tok_s", 0) for t in trials if t["status"] == "ok")
    assert 3000 < best < 7000  # the real study's trials span 3.4k-6.6k tok/s goodput
    out = capsys.readouterr().out
    assert "study summary" in out
    approximate = sum(t["engine_info"]["approximate"] for t in trials if t["status"] != "crash")
    assert approximate > 0 and "approximate answers" in out and f"{approximate} of 8 trials" in out


def test_a_capacity_study_on_replay_stops_at_the_first_probe_it_cannot_answer(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Replay answers the recorded loads only; a capacity search probes other levels (it used to log every trial as
    an 'error' record and exit 0 with "none met the SLO")."""
    code = main(["tune", "--backend", "replay", "--model", "qwen2-1.5b", "--gpu", "h100-80gb", "--budget", "3",
                 "--workload", "concurrency=32,num_requests=128", "--objective", "capacity", "--out", str(tmp_path),
                 "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and re.search(r"capacity probe at concurrency \d+: replay has no recorded load of the work", err)
    assert len(err.strip().splitlines()) == 1
    (log,) = tmp_path.glob("*.jsonl")
    assert [json.loads(line)["kind"] for line in log.read_text().splitlines()] == ["study"]  # no trial record
