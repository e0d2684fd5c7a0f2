from __future__ import annotations

import numpy as np
import pytest

from sloguard_lib.engine.sim import SimEngine
from sloguard_lib.errors import InputError
from sloguard_lib.hardware import get_gpu, resolve_model
from sloguard_lib.measure.metrics import LoadResult, RequestResult, pooled, summarize
from sloguard_lib.measure.slo import SLO
from sloguard_lib.measure.workload import Workload
from sloguard_lib.study.trial import evaluate


def _req(i: int, ttft_ms: float, itl_ms: float) -> RequestResult:
    gaps = [itl_ms / 1000] * 99
    return RequestResult(i, ok=True, prompt_tokens=10, output_tokens=100, ttft_s=ttft_ms / 1000, itl_s=gaps,
                         e2e_s=ttft_ms / 1000 + sum(gaps))


def test_docstring_worked_example() -> None:
    load = LoadResult([_req(0, 120, 20), _req(1, 300, 30), _req(2, 650, 25), _req(3, 200, 140)], duration_s=2.0)
    metrics = summarize(load)
    verdict = SLO(500, 100).evaluate(load, metrics)
    assert metrics["throughput_tok_s"] == pytest.approx(200)
    assert verdict.goodput_tok_s == pytest.approx(100)
    assert verdict.goodput_req_s == pytest.approx(1.0)
    assert verdict.attainment == pytest.approx(0.5)
    assert not verdict.feasible
    assert verdict.violated == ["itl_p99_ms", "ttft_p99_ms"]
    assert verdict.worst_excess == pytest.approx(0.4)
    assert verdict.usage == pytest.approx({"ttft_p99_ms": metrics["ttft_p99_ms"] / 500, "itl_p99_ms": 1.4})
    assert verdict.utility == pytest.approx(0.5 * 200 / 1.4**2)


def test_feasible_trial_utility_is_goodput() -> None:
    load = LoadResult([_req(i, 100 + i, 10) for i in range(10)], duration_s=1.0)
    verdict = SLO(500, 100).evaluate(load, summarize(load))
    assert verdict.feasible and verdict.utility == pytest.approx(1000)
    assert verdict.usage == pytest.approx({"ttft_p99_ms": 109 / 500, "itl_p99_ms": 0.1}, rel=0.01)


def test_failed_requests_make_a_trial_infeasible() -> None:
    reqs = [_req(i, 100, 10) for i in range(9)] + [RequestResult(9, ok=False, prompt_tokens=10, http_status=400)]
    load = LoadResult(reqs, duration_s=1.0)
    verdict = SLO(500, 100).evaluate(load, summarize(load))
    assert not verdict.feasible and verdict.violated == ["failed_requests"]
    assert verdict.goodput_tok_s == pytest.approx(900)


@pytest.mark.parametrize("kwargs", [{"ttft_p99_ms": -5}, {"itl_p99_ms": 0}, {"e2e_p99_ms": float("inf")}])
def test_invalid_slo_is_named(kwargs: dict[str, float]) -> None:
    name = next(iter(kwargs))
    with pytest.raises(InputError, match=name):
        SLO(**kwargs)  # type: ignore[arg-type]


def test_physically_impossible_slo() -> None:
    with pytest.raises(InputError, match="itl_p99_ms=0.5 is impossible"):
        SLO(500, 0.5).check_attainable(min_ttft_ms=5.0, min_itl_ms=0.9)


def test_repeated_loads_average_out_load_to_load_noise() -> None:
    """``repeats`` pools independent loads on one server: four of them cut a band config's goodput spread
    (Mistral long-prompt scenario, 880 tokens, just below the sim's ITL cliff at ~900: one 32-request load varies
    27 %, four pooled 12 %) by over half."""
    config = {"quantization": "fp16", "max_num_seqs": 24, "max_num_batched_tokens": 880,
              "gpu_memory_utilization": 0.9, "max_model_len": 3200, "enforce_eager": False,
              "enable_chunked_prefill": True, "enable_prefix_caching": False}
    engine = SimEngine(resolve_model("mistral-7b"), get_gpu("a100-40gb"))
    spread = {}
    for repeats in (1, 4):
        workload = Workload(concurrency=8, num_requests=32, input_len=3000, output_len=128, repeats=repeats)
        recs = [evaluate(engine, config, workload, SLO(3000, 120), seed) for seed in range(12)]
        assert {r["metrics"]["requests_ok"] for r in recs} == {32 * repeats}
        goodput = np.array([r["metrics"]["goodput_tok_s"] for r in recs])
        spread[repeats] = goodput.std(ddof=1) / goodput.mean()
    assert spread[1] > 0.12 and spread[4] < 0.5 * spread[1], spread


def test_pooled_loads_keep_rates_per_second_of_load() -> None:
    a = LoadResult([RequestResult(0, True, 10, 4, 0.1, [0.01] * 3, 0.2)], 1.0, {"num_preemptions": 1.0,
                                                                                 "kv_cache_usage_peak": 0.5})
    b = LoadResult([RequestResult(0, True, 10, 4, 0.3, [0.02] * 3, 0.4)] * 2, 3.0, {"num_preemptions": 2.0,
                                                                                     "kv_cache_usage_peak": 0.7})
    load = pooled([a, b])
    assert [r.index for r in load.requests] == [0, 1, 2] and load.duration_s == 4.0
    assert load.engine_stats == {"num_preemptions": 3.0, "kv_cache_usage_peak": 0.7}
    assert summarize(load)["throughput_tok_s"] == pytest.approx(12 / 4.0)
