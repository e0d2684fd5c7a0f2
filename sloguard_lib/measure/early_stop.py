"""Ending a trial's load once its verdict is decided: curtailment of the SLO test, and a bound on its goodput.

A trial is feasible only when no request failed and every trial-level p99 (TTFT over requests, ITL over token
gaps, the optional TPOT and E2E) is within its threshold (:mod:`sloguard_lib.measure.slo`). The number of values each
p99 is taken over is known before the load starts (the workload fixes every request's output length, sent with
``ignore_eos``), and the p99 of ``n`` values (numpy's linear interpolation, as :mod:`~sloguard_lib.measure.metrics`)
exceeds ``L`` as soon as ``n - floor(0.99 (n - 1))`` of them exceed it, whatever the others turn out to be. So
the monitor counts misses as requests complete and knows when a count reaches its limit, or a request fails: the
verdict is then *decided*, not estimated (deterministic curtailment, the degenerate sequential test whose error
rate is 0 rather than 5 %). A failed request ends the load at once; a decided p99 miss ends it once it is also
certainly a far miss (p99 at least ``FAR`` times the limit: the ``limit``-th largest value seen bounds the final
p99 from below), because the search learns its way to the SLO boundary from near misses' full measurements.
No model of the remaining requests is needed, and none would be safe: closed-loop requests are not exchangeable
(the first wave's TTFTs are a load's worst, all prompts arriving at once), so a test that extrapolated the early
miss rate would stop configs that end up feasible.

``beat``: the goodput the trial must exceed to matter (the incumbent's). The load's final goodput is at most
(output tokens of the good requests so far + every unfinished request's tokens) / the time elapsed, since the
load lasts at least that long; once that bound is below ``beat`` the trial cannot become the recommendation and
its load ends. What was measured up to then is the trial's record (its goodput is below the bound, hence below
``beat``), with ``early_stop`` saying why and when.

Backends take the monitor's ``observe`` as the ``until`` argument of ``Server.run_load``: the real load
generator stops sending and cancels the streams in flight (their server work is aborted); the simulator cuts
its finished simulation at the same instant (:func:`sloguard_lib.measure.metrics.truncate`).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Any

from sloguard_lib.measure.metrics import RequestResult
from sloguard_lib.measure.slo import SLO
from sloguard_lib.measure.workload import Workload

P99 = 0.99
#: a decided miss ends its load only once its p99 is certain to be at least this many times the limit. Ending every
#: decided miss cost tba-tpe the strict-ITL scenario of benchmarks/mechanisms.py (final 87 % -> 49 % of the best,
#: half the seeds finding nothing feasible): a miss cut early carries its first requests' p99, which makes a config
#: at 1.1x the limit look like one at 3x, and the search walks toward the SLO boundary on those near misses.
#: Measured over 20 seeds (final % of best / load-seconds per study): FAR 1: 48.8 / 32, FAR 2: 83.1 / 38,
#: FAR 4: 92.3 / 44, no early stop: 87.1 / 117; on the long-context Mistral 89.9 / 171, 89.5 / 237, 89.5 / 306
#: and 91.0 / 337.
FAR = 4.0


def misses_deciding_p99(n: int) -> int:
    """How many of ``n`` values above a limit put their p99 above it: ``n - floor(0.99 (n - 1))``."""
    return n - math.floor(P99 * (n - 1)) if n > 0 else 1


@dataclass(frozen=True)
class StopRule:
    """What a trial's load may be stopped for: the SLO (always) and, with ``beat``, the incumbent's goodput."""

    slo: SLO
    workload: Workload
    beat: float | None = None  # tok/s of goodput the trial must be able to exceed

    def monitor(self) -> Monitor:
        return Monitor(self)


@dataclass
class Monitor:
    """One trial's running counts, across its ``repeats`` loads (fed with the time since the first load began)."""

    rule: StopRule
    done: int = 0
    good_tokens: int = 0
    done_tokens: int = 0
    misses: dict[str, int] = field(init=False)  # per metric, values above its limit
    top: dict[str, list[float]] = field(init=False)
    limits: dict[str, int] = field(init=False)
    planned_tokens: int = field(init=False)
    reason: str | None = None
    at_s: float = math.nan

    def __post_init__(self) -> None:
        wl, slo = self.rule.workload, self.rule.slo
        outs = [r.output_len for r in wl.requests()] * wl.repeats
        self.planned_tokens = sum(outs)
        n = len(outs)
        # gaps: at most output_len - 1 per request (a server that batches tokens into one event sends fewer, and
        # a smaller count only lowers the limit, so counting with this one is never early)
        counts = {"ttft_p99_ms": n, "itl_p99_ms": sum(o - 1 for o in outs)}
        counts |= {k: n for k in ("tpot_p99_ms", "e2e_p99_ms") if k in slo.thresholds()}
        self.limits = {k: misses_deciding_p99(v) for k, v in counts.items()}
        self.misses = dict.fromkeys(self.limits, 0)
        self.top = {k: [] for k in self.limits}  # per metric, a min-heap of the largest misses (ms), ``limit`` at most

    def observe(self, r: RequestResult, at_s: float) -> bool:
        """Count one finished request (``at_s``: when it finished, since the trial's first load began); True once
        the load should end (``reason`` says why)."""
        if self.reason is not None:
            return True
        slo = self.rule.slo
        self.done += 1
        self.done_tokens += r.output_tokens
        if not r.ok:
            return self._stop("failed_request", at_s)
        limits = slo.thresholds()
        self._count("ttft_p99_ms", [r.ttft_s])
        self._count("itl_p99_ms", r.itl_s)
        if "tpot_p99_ms" in limits:
            self._count("tpot_p99_ms", [r.tpot_s])
        if "e2e_p99_ms" in limits:
            self._count("e2e_p99_ms", [r.e2e_s])
        for name in self.limits:  # decided (nan before) and far
            if self.p99_at_least(name) >= FAR * limits[name]:
                return self._stop(name, at_s)
        if slo.is_good(r):
            self.good_tokens += r.output_tokens
        beat = self.rule.beat
        if beat is not None and at_s > 0 and self.bound(at_s) < beat:
            return self._stop("cannot_beat_incumbent", at_s)
        return False

    def _count(self, name: str, values_s: list[float]) -> None:
        limit_ms, top = self.rule.slo.thresholds()[name], self.top[name]
        for v in values_s:
            if v * 1000 > limit_ms:
                self.misses[name] += 1
                heapq.heappush(top, v * 1000)
                if len(top) > self.limits[name]:
                    heapq.heappop(top)

    def p99_at_least(self, name: str) -> float:
        """A lower bound (ms) on the final p99, once it is decided: the ``limit``-th largest value seen (the final
        p99 is at least the final ``limit``-th largest, which is at least this one)."""
        top = self.top[name]
        return top[0] if len(top) >= self.limits[name] else math.nan

    def bound(self, at_s: float) -> float:
        """The highest goodput (tok/s) the trial can still end with, ``at_s`` into its loads."""
        return (self.good_tokens + self.planned_tokens - self.done_tokens) / at_s

    def _stop(self, reason: str, at_s: float) -> bool:
        self.reason, self.at_s = reason, at_s
        return True

    def record(self) -> dict[str, Any] | None:
        """What the trial's record keeps: why and when its load ended, None when it ran to the end."""
        if self.reason is None:
            return None
        return {"reason": self.reason, "at_s": self.at_s, "requests_done": self.done,
                "requests_planned": self.rule.workload.num_requests * self.rule.workload.repeats,
                "misses": {k: v for k, v in self.misses.items() if v}, "beat": self.rule.beat,
                **({"p99_at_least_ms": self.p99_at_least(self.reason)} if self.reason in self.limits else {})}
