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

Two goodput definitions are computed for every trial (``goodput_sloguard_*`` and ``goodput_vllm_*`` in its
metrics); ``SLO.goodput_def`` picks the one the utility and ``goodput_tok_s`` use:

* ``sloguard`` (default): the above; a request's ITL is judged by its own ITL p99, so one long stall (a prefill
  of another request in its batch) fails it even when its average pace is fine.
* ``vllm``: exactly ``vllm bench serve --goodput ttft:T tpot:P [e2el:E]`` (``calculate_metrics`` in
  ``vllm/benchmarks/serve.py``): a successful request is good when ``ttft <= T``, ``tpot <= P`` and
  ``e2el <= E`` (each key that is set; ``tpot = (latency - ttft) / (output_tokens - 1)``, 0 for one token),
  with ``T`` the TTFT SLO, ``P`` the TPOT SLO or else the ITL SLO, ``E`` the E2E SLO; failed requests are never
  good (GuideLLM counts errored requests as misses too). TPOT averages over the stream, so it forgives the
  stalls the per-request ITL p99 catches: in the example above request 4 (ITL p99 140 ms) is good under
  ``vllm`` if its TPOT is below 100 ms.

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

from sloguard_lib.errors import InputError
from sloguard_lib.measure.metrics import LoadResult, RequestResult

SLO_MISS_FACTOR = 0.5
GOODPUT_DEFS = ("sloguard", "vllm")


@dataclass(frozen=True)
class SLO:
    ttft_p99_ms: float = 500.0
    itl_p99_ms: float = 100.0
    e2e_p99_ms: float | None = None
    tpot_p99_ms: float | None = None
    goodput_def: str = "sloguard"  # or "vllm": which per-request goodput the utility uses (module docstring)

    def __post_init__(self) -> None:
        for name, value in self.thresholds().items():
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise InputError(f"SLO {name}={value!r}: must be a positive, finite number of milliseconds")
        if self.goodput_def not in GOODPUT_DEFS:
            raise InputError(f"goodput definition {self.goodput_def!r}: choose one of {', '.join(GOODPUT_DEFS)}")

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

    def request_is_good_vllm(self, r: RequestResult) -> bool:
        """``vllm bench serve --goodput``'s test of one request, in its units (seconds, ``<=``)."""
        if not r.ok:
            return False
        limits = [(r.ttft_s, self.ttft_p99_ms), (r.tpot_s, self.tpot_p99_ms or self.itl_p99_ms)]
        if self.e2e_p99_ms is not None:
            limits.append((r.e2e_s, self.e2e_p99_ms))
        return all(value <= ms / 1000 for value, ms in limits)

    def is_good(self, r: RequestResult) -> bool:
        """The per-request test of this SLO's goodput definition."""
        return self.request_is_good_vllm(r) if self.goodput_def == "vllm" else self.request_is_good(r)

    def evaluate(self, load: LoadResult, metrics: dict[str, float]) -> SloVerdict:
        dur = max(load.duration_s, 1e-9)
        by_def = {}
        for name, test in (("sloguard", self.request_is_good), ("vllm", self.request_is_good_vllm)):
            good = [r for r in load.requests if test(r)]
            by_def[name] = (sum(r.output_tokens for r in good) / dur, len(good) / dur, len(good))
        goodput_tok_s, goodput_req_s, n_good = by_def[self.goodput_def]
        usage = {}
        for name, limit in self.thresholds().items():
            observed = metrics.get(name, float("nan"))
            usage[name] = math.inf if math.isnan(observed) else observed / limit
        worst = max(usage.values()) - 1.0
        failed = int(metrics.get("requests_failed", 0))
        return SloVerdict(
            goodput_tok_s=goodput_tok_s,
            goodput_req_s=goodput_req_s,
            attainment=n_good / max(1, len(load.requests)),
            feasible=worst <= 0 and failed == 0,
            worst_excess=worst,
            violated=sorted(k for k, v in usage.items() if v > 1) + (["failed_requests"] if failed else []),
            throughput_tok_s=float(metrics.get("throughput_tok_s", 0.0)),
            usage=usage,
            by_definition={f"goodput_{name}_{unit}": v for name, (tok, req, _) in by_def.items()
                           for unit, v in (("tok_s", tok), ("req_s", req))},
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SLO:
        """As logged: a header written before ``goodput_def`` existed used the ``sloguard`` definition."""
        return cls(**d)

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
    by_definition: dict[str, float] = field(default_factory=dict)  # goodput_{sloguard,vllm}_{tok_s,req_s}

    @property
    def utility(self) -> float:
        if self.feasible:
            return self.goodput_tok_s
        if not math.isfinite(self.worst_excess):
            return 0.0
        # throughput, not goodput: a config at 1.3x the ITL SLO may have zero goodput yet be one step
        # from feasible; the squared distance keeps far misses low
        return SLO_MISS_FACTOR * self.throughput_tok_s / (1.0 + max(0.0, self.worst_excess)) ** 2
