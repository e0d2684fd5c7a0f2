"""The SLO contract, per-request attainment, goodput and the optimizer's utility.

Definitions (per-request goodput, as ``vllm bench serve --goodput``):

* A request is **good** when it succeeded and met every per-request threshold that is set:
  ``ttft <= ttft_p99_ms``, its own ITL p99 ``<= itl_p99_ms``, ``tpot <= tpot_p99_ms``,
  ``e2e <= e2e_p99_ms``.
* **Goodput** = output tokens of good requests / load duration (tok/s); request goodput = good
  requests / duration (req/s).
* A trial is **feasible** when the server did not crash, no request failed, and every trial-level p99
  (TTFT, ITL and the optional TPOT/E2E) is within its threshold.

Worked example: SLO TTFT 500 ms / ITL 100 ms; 4 requests of 100 output tokens over 2.0 s with TTFTs
120, 300, 650, 200 ms and ITL p99s 20, 30, 25, 140 ms. Requests 3 (TTFT) and 4 (ITL) miss, so goodput
= 2 x 100 / 2.0 = 100 tok/s (throughput 200 tok/s), request goodput = 1.0 req/s, attainment 50 %.
The trial's TTFT p99 (~640 ms) also misses, so it is an ``slo_violation``, not feasible.

Utility for the optimizer: feasible -> goodput; SLO miss -> 0.5 x throughput / (1 + worst relative
excess)^2, so misses rank below comparable feasible configs yet still point toward the SLO boundary
(goodput alone is flat at zero for every hard miss); a miss with failed requests -> 0; crashes have no
utility at all (optimizers record them as failures, never as zero). In the example above the worst
excess is the ITL's, 140/100 - 1 = 0.4, so utility = 0.5 x 200 / 1.4^2 = 51 tok/s.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import InputError
from .metrics import LoadResult, RequestResult

SLO_MISS_FACTOR = 0.5


@dataclass(frozen=True)
class SLO:
    ttft_p99_ms: float = 500.0
    itl_p99_ms: float = 100.0
    e2e_p99_ms: float | None = None
    tpot_p99_ms: float | None = None

    def __post_init__(self) -> None:
        for name, value in self.thresholds().items():
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise InputError(f"SLO {name}={value!r}: must be a positive, finite number of milliseconds")

    def thresholds(self) -> dict[str, float]:
        t = {"ttft_p99_ms": self.ttft_p99_ms, "itl_p99_ms": self.itl_p99_ms}
        if self.e2e_p99_ms is not None:
            t["e2e_p99_ms"] = self.e2e_p99_ms
        if self.tpot_p99_ms is not None:
            t["tpot_p99_ms"] = self.tpot_p99_ms
        return t

    def check_attainable(self, min_ttft_ms: float, min_itl_ms: float) -> None:
        """Reject SLOs below the hardware's physical floor (e.g. ITL under one weight read from HBM)."""
        if self.itl_p99_ms < min_itl_ms:
            raise InputError(
                f"SLO itl_p99_ms={self.itl_p99_ms:g} is impossible here: one decode step needs at least "
                f"{min_itl_ms:.2f} ms to read the weights at peak memory bandwidth"
            )
        if self.ttft_p99_ms < min_ttft_ms:
            raise InputError(
                f"SLO ttft_p99_ms={self.ttft_p99_ms:g} is impossible here: one prefill of the prompt needs at "
                f"least {min_ttft_ms:.2f} ms at peak compute and bandwidth"
            )

    def request_is_good(self, r: RequestResult) -> bool:
        if not r.ok:
            return False
        if r.ttft_s * 1000 > self.ttft_p99_ms:
            return False
        if r.itl_p99_s * 1000 > self.itl_p99_ms:
            return False
        if self.tpot_p99_ms is not None and r.tpot_s * 1000 > self.tpot_p99_ms:
            return False
        return not (self.e2e_p99_ms is not None and r.e2e_s * 1000 > self.e2e_p99_ms)

    def evaluate(self, load: LoadResult, metrics: dict[str, float]) -> SloVerdict:
        good = [r for r in load.requests if self.request_is_good(r)]
        dur = max(load.duration_s, 1e-9)
        usage = {}
        for name, limit in self.thresholds().items():
            observed = metrics.get(name, float("nan"))
            usage[name] = math.inf if math.isnan(observed) else observed / limit
        worst = max(usage.values()) - 1.0
        failed = int(metrics.get("requests_failed", 0))
        return SloVerdict(
            goodput_tok_s=sum(r.output_tokens for r in good) / dur,
            goodput_req_s=len(good) / dur,
            attainment=len(good) / max(1, len(load.requests)),
            feasible=worst <= 0 and failed == 0,
            worst_excess=worst,
            violated=sorted(k for k, v in usage.items() if v > 1) + (["failed_requests"] if failed else []),
            throughput_tok_s=float(metrics.get("throughput_tok_s", 0.0)),
            usage=usage,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SloVerdict:
    goodput_tok_s: float
    goodput_req_s: float
    attainment: float
    feasible: bool
    worst_excess: float  # max over SLO metrics of observed/threshold - 1 (<= 0 when all met)
    violated: list[str]

    throughput_tok_s: float = 0.0
    # observed p99 / threshold per SLO metric: which SLO binds a feasible config, not only whether one broke
    usage: dict[str, float] = field(default_factory=dict)

    @property
    def utility(self) -> float:
        if self.feasible:
            return self.goodput_tok_s
        if not math.isfinite(self.worst_excess):
            return 0.0
        # throughput, not goodput: a config at 1.3x the ITL SLO may have zero goodput yet be one step
        # from feasible; the squared distance keeps far misses low
        return SLO_MISS_FACTOR * self.throughput_tok_s / (1.0 + max(0.0, self.worst_excess)) ** 2
