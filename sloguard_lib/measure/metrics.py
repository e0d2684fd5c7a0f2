"""Per-request measurements and the trial's latency/throughput summary.

Backends report raw :class:`RequestResult` records (one per measured request); everything derived from
them is computed here, once, so the simulator, the real load generator and the replay backend can never
disagree on what "ITL p99" means. Percentiles use numpy's linear interpolation, as ``vllm bench serve``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class RequestResult:
    index: int
    ok: bool
    prompt_tokens: int
    output_tokens: int = 0
    ttft_s: float = float("nan")
    itl_s: list[float] = field(default_factory=list)  # every gap between consecutive streamed tokens
    e2e_s: float = float("nan")
    http_status: int | None = 200
    error: str | None = None
    start_s: float = float("nan")  # when it was sent, since the load began (nan where a backend cannot say)

    @property
    def end_s(self) -> float:
        """When its last byte arrived, since the load began."""
        return self.start_s + self.e2e_s

    @property
    def tpot_s(self) -> float:
        """Time per output token after the first, as vLLM defines it: (e2e - ttft) / (n - 1)."""
        if self.output_tokens <= 1:
            return 0.0
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)

    @property
    def itl_p99_s(self) -> float:
        """This request's own ITL p99, what its ITL SLO is judged on (0 for a single-token answer)."""
        return float(np.percentile(self.itl_s, 99)) if self.itl_s else 0.0


@dataclass
class LoadResult:
    """What one load run against one server produced."""

    requests: list[RequestResult]
    duration_s: float  # first send to last byte
    engine_stats: dict[str, float] = field(default_factory=dict)  # preemptions, kv peak, ...


def truncate(load: LoadResult, until: Callable[[RequestResult], bool]) -> LoadResult:
    """The load as it would have been had it ended when ``until`` first returned True, ``until`` being called with
    each request in the order they finished: the requests finished by then, that instant as its duration (what a
    live client's stop yields; the simulator's way to honour ``Server.run_load(until=...)``)."""
    finished = sorted((r for r in load.requests if math.isfinite(r.end_s)), key=lambda r: r.end_s)
    for k, r in enumerate(finished):
        if until(r):
            return dataclasses.replace(load, requests=sorted(finished[:k + 1], key=lambda r: r.index),
                                       duration_s=r.end_s)
    return load


def pooled(loads: Sequence[LoadResult]) -> LoadResult:
    """Back-to-back loads on one server as one measurement: their requests, their summed durations (so rates
    stay per second of load), preemptions added and the highest KV-cache peak."""
    if len(loads) == 1:
        return loads[0]
    requests = [dataclasses.replace(r, index=i) for i, r in enumerate(r for load in loads for r in load.requests)]
    stats: dict[str, float] = {}
    for load in loads:
        for k, v in load.engine_stats.items():
            stats[k] = max(stats.get(k, v), v) if k.endswith("_peak") else stats.get(k, 0.0) + v
    return LoadResult(requests, sum(load.duration_s for load in loads), stats)


PCTS = (50, 95, 99)


def _pcts(prefix: str, values: Iterable[float], scale: float = 1000.0) -> dict[str, float]:
    arr = np.asarray(list(values), dtype=float)
    if arr.size == 0:
        return {f"{prefix}_p{p}_ms": float("nan") for p in PCTS} | {f"{prefix}_mean_ms": float("nan")}
    out = {f"{prefix}_p{p}_ms": float(np.percentile(arr, p)) * scale for p in PCTS}
    out[f"{prefix}_mean_ms"] = float(arr.mean()) * scale
    return out


def summarize(load: LoadResult) -> dict[str, float]:
    """Latency percentiles (ms), throughput (tok/s, req/s) and request counts of one load run."""
    ok = [r for r in load.requests if r.ok]
    out: dict[str, float] = {}
    out |= _pcts("ttft", (r.ttft_s for r in ok))
    out |= _pcts("itl", (g for r in ok for g in r.itl_s))
    out |= _pcts("tpot", (r.tpot_s for r in ok if r.output_tokens > 1))
    out |= _pcts("e2e", (r.e2e_s for r in ok))
    dur = max(load.duration_s, 1e-9)
    out_tokens = sum(r.output_tokens for r in ok)
    out["throughput_tok_s"] = out_tokens / dur
    out["total_tok_s"] = (out_tokens + sum(r.prompt_tokens for r in ok)) / dur
    out["request_throughput"] = len(ok) / dur
    out["requests_ok"] = len(ok)
    out["requests_failed"] = len(load.requests) - len(ok)
    out["duration_s"] = load.duration_s
    out.update({f"engine_{k}": float(v) for k, v in load.engine_stats.items()})
    return out
