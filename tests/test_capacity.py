"""Capacity mode: the highest load a config sustains under the SLO, bracketed on one server per config."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from sloguard_lib.engine.sim import SimEngine
from sloguard_lib.errors import InputError
from sloguard_lib.hardware import get_gpu, resolve_model
from sloguard_lib.measure.capacity import CapacitySearch, Probe, capacity_map
from sloguard_lib.measure.metrics import LoadResult, RequestResult
from sloguard_lib.measure.slo import SLO
from sloguard_lib.measure.workload import Workload
from sloguard_lib.study.incumbent import recommend
from sloguard_lib.study.runner import StudySpec, run_study
from sloguard_lib.study.space import config_key
from sloguard_lib.study.trial import evaluate

WL = Workload(concurrency=32, num_requests=96, input_len=512, output_len=128)
CONFIG = {"max_num_seqs": 64, "max_num_batched_tokens": 2048, "enable_chunked_prefill": True}


def _engine() -> SimEngine:
    return SimEngine(resolve_model("qwen2-1.5b"), get_gpu("a100-40gb"))


def test_the_capacity_is_bracketed_by_a_passing_and_a_failing_probe_on_one_server() -> None:
    # (seed 4: on seed 3 the one miss that fails level 32 is its last request, so that probe cannot end early)
    rec = evaluate(_engine(), CONFIG, WL, SLO(500, 100), 4, capacity=CapacitySearch(0.99))
    cap = rec["capacity"]
    level, top = cap["interval"]
    probes = {p["level"]: p for p in cap["probes"]}
    assert rec["status"] == "ok" and rec["utility"] == level == cap["level"] > 1
    assert probes[level]["passed"] and probes[level]["attainment"] >= 0.99
    assert not probes[top]["passed"] and top - level <= max(1, 0.1 * level)
    assert all(p["passed"] == (p["level"] <= level) for p in cap["probes"])  # one cliff, found from both sides
    # a failing probe ends once its misses exceed the 1 % the target allows; a passing one runs to the end
    assert all(p["requests"] < max(96, 3 * p["level"]) for p in cap["probes"] if not p["passed"])
    assert all(p["requests"] == max(96, 3 * p["level"]) for p in cap["probes"] if p["passed"])
    # the trial's metrics are those of the sustained level; its GPU time counts every probe
    assert rec["metrics"]["requests_ok"] == max(96, 3 * level)
    assert rec["gpu_seconds"] == pytest.approx(rec["engine_start_s"] + sum(p["duration_s"] for p in cap["probes"]))


def test_a_lower_target_sustains_at_least_as_much() -> None:
    strict = evaluate(_engine(), CONFIG, WL, SLO(500, 100), 3, capacity=CapacitySearch(0.99))["capacity"]["level"]
    loose = evaluate(_engine(), CONFIG, WL, SLO(500, 100), 3, capacity=CapacitySearch(0.5))["capacity"]["level"]
    assert loose >= strict


def test_open_loop_capacity_is_a_request_rate() -> None:
    wl = dataclasses.replace(WL, rate=4.0, num_requests=64)
    cap = evaluate(_engine(), CONFIG, wl, SLO(500, 100), 3, capacity=CapacitySearch(0.99))["capacity"]
    assert cap["unit"] == "rate" and cap["level"] > 4.0 and cap["interval"][1] is not None
    assert cap["interval"][1] - cap["level"] <= 0.1 * cap["level"] + 1e-9


def test_a_config_that_sustains_no_load_is_a_miss_with_no_utility() -> None:
    rec = evaluate(_engine(), CONFIG, WL, SLO(500, 1.0), 3, capacity=CapacitySearch(0.99, max_level=8))
    assert rec["status"] == "slo_violation" and rec["utility"] == 0 and rec["capacity"]["level"] == 0
    assert [p["level"] for p in rec["capacity"]["probes"]] == [8.0, 4.0, 2.0, 1.0]  # halved down to the floor


def test_a_capacity_study_starts_each_search_where_earlier_ones_predict_and_maps_every_config(tmp_path: Path) -> None:
    spec = StudySpec(model="qwen2-1.5b", gpu="a100-40gb", optimizer="tba-tpe", budget=12, workload=WL,
                     objective="capacity")
    trials = run_study(spec, tmp_path).trials
    assert "capacity" in trials[0]["study_id"]
    assert trials[0]["capacity"]["start"] == WL.concurrency
    hinted = sum(len(t["capacity"]["probes"]) for t in trials if t.get("capacity"))
    assert all(t["capacity"]["start"] != WL.concurrency for t in trials[3:] if t.get("capacity"))
    # the same configs, each searched from the workload's level: more probes for the same brackets
    engine = _engine()
    cold = [evaluate(engine, t["config"], WL, SLO(500, 100), 1000 + t["trial"], capacity=CapacitySearch(0.99))
            for t in trials if t.get("capacity")]
    assert hinted < sum(len(r["capacity"]["probes"]) for r in cold)
    rows = capacity_map(trials)
    by_config: dict[str, list[float]] = {}
    for t in trials:
        if t.get("capacity"):
            by_config.setdefault(config_key(t["config"]), []).append(t["utility"])
    assert rows[0]["level"] == max(min(v) for v in by_config.values())  # sustained: every time it was searched
    assert [r["level"] for r in rows] == sorted((r["level"] for r in rows), reverse=True)
    assert sum(r["searches"] for r in rows) == sum(1 for t in trials if t.get("capacity"))


def test_a_validated_capacity_is_reported_in_its_own_unit(tmp_path: Path) -> None:
    """One re-measurement of a finalist: its interval is its capacity bracket (it was the goodput's, in tok/s)."""
    spec = StudySpec(model="qwen2-1.5b", gpu="a100-40gb", optimizer="tba-tpe", budget=4, workload=WL,
                     objective="capacity", validate=1)
    result = run_study(spec, tmp_path)
    best = recommend(result.trials)
    assert best is not None and best["validated"] is True and best["measurements"] == 1
    cap = best["capacity"]
    assert best["interval"] == [cap["level"], cap["interval"][1]] and cap["level"] < cap["interval"][1] < 1000


@pytest.mark.parametrize(("target", "top"), [(1.0, None), (0.0, None), (math.nan, None), (0.9, 0.0), (0.9, 1e9)])
def test_bad_capacity_settings_are_refused(target: float, top: float | None) -> None:
    with pytest.raises(InputError, match="--capacity-"):
        CapacitySearch(target, max_level=top)


class _Cliff:
    """A server that meets the SLO for every request up to ``capacity`` concurrent, and for none above."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity

    def run_load(self, wl: Workload, until: object = None) -> LoadResult:
        ttft = 0.1 if wl.concurrency <= self.capacity else 9.0
        return LoadResult([RequestResult(i, ok=True, prompt_tokens=8, output_tokens=4, ttft_s=ttft,
                                         itl_s=[0.01] * 3, e2e_s=ttft + 0.03) for i in range(wl.num_requests)], 1.0)


@pytest.mark.parametrize("start", [None, 1.0, 2.0, 3.0, 5.0, 17.0, 300.0])
def test_the_search_brackets_the_capacity_from_any_start(start: float | None) -> None:
    wl = Workload(concurrency=8, num_requests=8, input_len=8, output_len=4)
    for true in [1, 2, 3, 4, 6, 7, 9, 13, 40, 100, 511]:
        probes: list[Probe] = []
        CapacitySearch(0.99, start=start).run(_Cliff(true), wl, SLO(500, 100), probes)  # type: ignore[arg-type]
        passed = [p.level for p in probes if p.passed]
        failed = [p.level for p in probes if not p.passed]
        level, above = max(passed), min(failed, default=math.inf)
        assert level <= true < above and above - level <= max(1, 0.1 * level), (start, true, probes)
        assert len(probes) <= 14
