from __future__ import annotations

import pytest

from sloguard_lib.errors import InputError
from sloguard_lib.metrics import LoadResult, RequestResult, summarize
from sloguard_lib.slo import SLO


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
