"""Early stop: a load ends only once its verdict is decided, and the decision is the one the full load reaches."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sloguard_lib.engine.sim import SimEngine
from sloguard_lib.hardware import get_gpu, resolve_model
from sloguard_lib.measure.early_stop import FAR, StopRule, misses_deciding_p99
from sloguard_lib.measure.loadgen import LoadTarget, run_load
from sloguard_lib.measure.slo import SLO
from sloguard_lib.measure.workload import Workload
from sloguard_lib.study.runner import StudySpec, default_space, run_study
from sloguard_lib.study.trial import evaluate

from .sse_stub import SSEStub


@pytest.mark.parametrize("n", [1, 2, 3, 50, 99, 100, 101, 128, 200, 1000, 25_400])
def test_the_miss_limit_decides_numpys_p99_and_no_smaller_count_does(n: int) -> None:
    limit, cap = misses_deciding_p99(n), 100.0
    worst_rest = np.zeros(n)  # the others as far below the limit as they can be
    worst_rest[:limit] = cap * 1.0001
    assert np.percentile(worst_rest, 99) > cap
    if limit > 1:  # one miss fewer, barely over: the remaining values can still hold the p99 at the limit
        fewer = np.zeros(n)
        fewer[:limit - 1] = cap * 1.0001
        assert np.percentile(fewer, 99) <= cap
    assert misses_deciding_p99(200) == 3 and misses_deciding_p99(25_400) == 255


WL = Workload(concurrency=32, num_requests=96, input_len=512, output_len=128)
SLO_ = SLO(500, 100)


def _configs(n: int) -> list[dict[str, object]]:
    space = default_space("qwen2-1.5b", "a100-40gb", WL)
    rng = np.random.default_rng(7)
    return [space.finalize(space.sample(rng)) for _ in range(n)]


def test_a_stopped_trial_is_one_whose_full_load_reaches_the_same_verdict() -> None:
    """40 random configs, each evaluated in full and with early stop on the same seed: every SLO stop names a
    limit the full load breaks, every incumbent stop a trial whose full goodput is below the incumbent, and an
    unstopped trial's record is the full one."""
    engine = SimEngine(resolve_model("qwen2-1.5b"), get_gpu("a100-40gb"))
    beat = 2500.0  # below most feasible goodputs here (13 of 40, 805-3,800 tok/s): some stop on it, most beat it
    reasons: dict[str, int] = {}
    for i, config in enumerate(_configs(40)):
        full = evaluate(engine, config, WL, SLO_, 1000 + i)
        cut = evaluate(engine, config, WL, SLO_, 1000 + i, stop=StopRule(SLO_, WL, beat=beat))
        if full["status"] == "crash":
            assert cut["status"] == "crash" and "early_stop" not in cut
            continue
        stop = cut.get("early_stop")
        if stop is None:
            assert json.dumps(cut["metrics"]) == json.dumps(full["metrics"])
            continue
        reasons[stop["reason"]] = reasons.get(stop["reason"], 0) + 1
        assert cut["load_s"] <= full["load_s"] and cut["metrics"]["requests_ok"] <= stop["requests_done"] <= 96
        assert stop["at_s"] == pytest.approx(cut["load_s"])
        if stop["reason"] == "cannot_beat_incumbent":
            assert cut["metrics"]["goodput_tok_s"] < beat
            assert full["status"] == "slo_violation" or full["metrics"]["goodput_tok_s"] < beat
        else:
            assert full["status"] == "slo_violation" and stop["reason"] in full["violated"]
            if stop["reason"] != "failed_request":  # stopped as a far miss: the bound holds for the full load
                limit = SLO_.thresholds()[stop["reason"]]
                assert full["metrics"][stop["reason"]] >= stop["p99_at_least_ms"] >= FAR * limit
            assert cut["status"] == "slo_violation" and stop["reason"] in cut["violated"]
    # the property above was exercised on both kinds of stop
    assert reasons.get("cannot_beat_incumbent", 0) >= 3 and sum(reasons.values()) - reasons.get(
        "cannot_beat_incumbent", 0) >= 3, reasons


def test_an_early_stopping_study_resumes_exactly(tmp_path: pytest.TempPathFactory) -> None:
    spec = StudySpec(model="qwen2-1.5b", gpu="a100-40gb", optimizer="tba-tpe", budget=10, early_stop=True,
                     workload=WL)
    whole = run_study(spec, tmp_path / "whole").trials  # type: ignore[operator]
    run_study(StudySpec(**{**spec.__dict__, "budget": 4}), tmp_path / "split")  # type: ignore[operator]
    split = run_study(spec, tmp_path / "split", resume=True).trials  # type: ignore[operator]
    drop = ("finished", "wall_s")
    assert [{k: v for k, v in t.items() if k not in drop} for t in split] == \
        [{k: v for k, v in t.items() if k not in drop} for t in whole]
    stopped = [t["early_stop"]["reason"] for t in whole if "early_stop" in t]
    assert len(stopped) >= 3, stopped
    with pytest.raises(Exception, match="early_stop"):  # the same log under other rules is another study
        run_study(StudySpec(**{**spec.__dict__, "early_stop": False}), tmp_path / "split", resume=True)  # type: ignore[operator]


def test_the_load_generator_stops_sending_and_cancels_the_streams_in_flight() -> None:
    """A live stop after the 5th finished request: the server saw about that many plus those in flight, the
    result holds only requests finished by then, and the load lasted until then."""
    seen: list[float] = []

    def until(r: object) -> bool:
        seen.append(r.end_s)  # type: ignore[attr-defined]
        return len(seen) >= 5

    wl = Workload(concurrency=4, num_requests=40, input_len=8, output_len=20, warmup=0)
    with SSEStub(token_interval_s=0.005).running() as stub:
        target = LoadTarget(f"http://127.0.0.1:{stub.port}", "m", vocab_size=1000)
        load = run_load(target, wl, until=until)
        full = run_load(target, wl)
    assert 5 <= len(load.requests) <= 8 and all(r.ok and r.output_tokens == 20 for r in load.requests)
    assert load.duration_s == pytest.approx(max(r.end_s for r in load.requests))
    assert load.duration_s < full.duration_s / 3  # 40 requests in rounds of 4: the stop came after ~2 rounds
    assert stub.requests < 40 + 12  # this load sent at most its first 12, the full one all 40
