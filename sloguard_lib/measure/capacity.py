"""Capacity: the highest load a config sustains under the SLO, found on one server by bracketing and bisection.

``--objective capacity`` asks, for each config, the question of vLLM's sweep RFC (#27084) and GuideLLM's goodput
profile: how much load can it take while at least ``target`` of its requests (e.g. 99 %) meet the SLO
(``SLO.is_good``, the study's goodput definition; a failed request is a miss)? The load level is the workload's
concurrency (closed loop) or its request rate (open loop, concurrency as the cap).

One trial = one server start and several probe loads on it (a start costs 20-90 s, a probe seconds):

1. probe at ``start``: the capacity that the configs searched so far predict for this one (:func:`start_from`),
   else the workload's own level;
2. step up (or down) until one level passes and one fails, or the level reaches ``max_level`` (or the floor):
   from the workload's level by doubling; from a neighbour's by 1.25x, then 1.56x, then doubling, since it is
   probably close;
3. bisect until the bracket is within ``tolerance`` (relative; 1 for concurrency).

The capacity is the highest passing level, and its interval is the bracket [highest passing, lowest failing): the
true capacity lies inside it, at the resolution searched. A probe ends as soon as it has more misses than the
target allows (the same curtailment as :mod:`~sloguard_lib.measure.early_stop`: its verdict is decided), so failing
probes, half of every bisection, cost a fraction of a load. A closed-loop probe sends at least ``PER_SLOT`` requests per
slot of concurrency, so its attainment is not only the first wave's; an open-loop probe has no client cap on
concurrency and arrivals over at least ``RATE_WINDOW_S``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sloguard_lib.engine.base import Server
from sloguard_lib.errors import InputError
from sloguard_lib.measure.metrics import LoadResult, RequestResult
from sloguard_lib.measure.slo import SLO
from sloguard_lib.measure.workload import Workload
from sloguard_lib.study.space import Config, SearchSpace, config_key

PER_SLOT = 3  # requests per unit of concurrency in a probe: the first wave is a third of it
RATE_WINDOW_S = 10.0  # an open-loop probe's arrivals last at least this long
NEAR_STEP = 1.25  # the first step from a neighbour's level, squared at each further step, up to 2x
MAX_PROBES = 20  # a guard: climbing from 1 to 512 and bisecting to 10 % takes 14 at most (tested)
MIN_FIT = 3  # searches before their regression predicts where the next one starts
DEFAULT_MAX = {"concurrency": 512.0, "rate": 1000.0}
MAX_LEVEL = 100_000.0  # a typo's bound: 3 x 100,000 requests per probe is already hours


@dataclass(frozen=True)
class Probe:
    level: float
    attainment: float  # share of the probe's planned requests that met the SLO (unfinished ones count as misses)
    passed: bool
    load: LoadResult


@dataclass(frozen=True)
class CapacitySearch:
    target: float = 0.99
    start: float | None = None  # the first level probed; None: the workload's own
    max_level: float | None = None  # None: DEFAULT_MAX of the unit
    tolerance: float = 0.10

    def __post_init__(self) -> None:
        if not 0 < self.target < 1:  # also NaN
            raise InputError(f"--capacity-target must be a share between 0 and 1 (e.g. 0.99), got {self.target}")
        if self.max_level is not None and not 0.01 <= self.max_level <= MAX_LEVEL:
            raise InputError(f"--capacity-max must be 0.01..{MAX_LEVEL:g} (concurrency or requests/s), "
                             f"got {self.max_level}")

    @staticmethod
    def unit(workload: Workload) -> str:
        return "concurrency" if workload.closed_loop else "rate"

    def probe_workload(self, workload: Workload, level: float, i: int) -> Workload:
        if workload.closed_loop:
            c = int(level)
            return dataclasses.replace(workload, concurrency=c, num_requests=max(workload.num_requests, PER_SLOT * c),
                                       seed=workload.seed + i, repeats=1)
        # open loop: no client cap (one would queue the excess in the client, out of sight of TTFT), and arrivals
        # spanning at least RATE_WINDOW_S, so a rate the server falls behind on has time to build its queue
        n = max(workload.num_requests, math.ceil(level * RATE_WINDOW_S))
        return dataclasses.replace(workload, rate=level, num_requests=n, concurrency=n, seed=workload.seed + i,
                                   repeats=1)

    def run(self, server: Server, workload: Workload, slo: SLO, probes: list[Probe]) -> None:
        """Append the probes to ``probes`` as they are run (a crash mid-search leaves those that finished)."""
        unit = self.unit(workload)
        closed = unit == "concurrency"
        floor, top = (1.0 if closed else 0.01), float(self.max_level or DEFAULT_MAX[unit])
        first = self.start if self.start is not None else (workload.concurrency if closed else workload.rate)
        level = _snap(min(max(first, floor), top), closed)
        passed_at, failed_at = -math.inf, math.inf
        growth = NEAR_STEP if self.start is not None else 2.0
        while len(probes) < MAX_PROBES:
            wl = self.probe_workload(workload, level, len(probes))
            try:
                probe = self._probe(server, wl, slo, level)
            except InputError as e:
                raise InputError(f"capacity probe at {unit} {level:g}: {e}") from None
            probes.append(probe)
            if probe.passed:
                passed_at = level
            else:
                failed_at = level
            step = 1.0 if closed else 0.0  # a concurrency moves by one at least, where 1.25x rounds to itself
            if math.isinf(failed_at):
                nxt, growth = min(max(_snap(level * growth, closed), level + step), top), min(growth ** 2, 2.0)
            elif math.isinf(passed_at):
                nxt, growth = max(min(_snap(level / growth, closed), level - step), floor), min(growth ** 2, 2.0)
            else:
                if failed_at - passed_at <= max(step, self.tolerance * passed_at):
                    break
                nxt = _snap((passed_at + failed_at) / 2, closed)
            if any(p.level == nxt for p in probes):  # at the top or the floor, or the bracket is one step wide
                break
            level = nxt

    def _probe(self, server: Server, wl: Workload, slo: SLO, level: float) -> Probe:
        planned = wl.num_requests
        allowed = math.floor((1 - self.target) * planned + 1e-9)  # misses the target tolerates
        misses = 0

        def until(r: RequestResult) -> bool:  # decided once the misses exceed what the target tolerates
            nonlocal misses
            misses += not slo.is_good(r)
            return misses > allowed

        load = server.run_load(wl, until=until)
        good = sum(slo.is_good(r) for r in load.requests)
        attainment = good / planned
        return Probe(level, attainment, attainment >= self.target - 1e-12, load)


def _snap(level: float, closed: bool) -> float:
    return float(max(1, math.floor(level))) if closed else round(level, 4)


def summary(probes: Sequence[Probe], search: CapacitySearch, workload: Workload) -> dict[str, Any]:
    """The record's ``capacity``: the level sustained, its bracket and every probe."""
    passed = [p.level for p in probes if p.passed]
    level = max(passed, default=0.0)
    above = [p.level for p in probes if not p.passed and p.level > level]
    return {"unit": search.unit(workload), "level": level, "interval": [level, min(above) if above else None],
            "target": search.target, "start": probes[0].level if probes else None,
            "probes": [{"level": p.level, "attainment": round(p.attainment, 4), "passed": p.passed,
                        "requests": len(p.load.requests), "duration_s": p.load.duration_s} for p in probes]}


def judged(probes: Sequence[Probe]) -> Probe:
    """The probe the trial's metrics are of: the highest passing level, else the lowest level tried."""
    passing = [p for p in probes if p.passed]
    return max(passing, key=lambda p: p.level) if passing else min(probes, key=lambda p: p.level)


def start_from(history: Sequence[Mapping[str, Any]], config: Config, space: SearchSpace) -> float | None:
    """Where to start this config's search: the capacity an extra-trees regression on the configs searched so far
    predicts for it (log level on :meth:`SearchSpace.encode`), from ``MIN_FIT`` searches on; None before.

    Measured on the sim (qwen2-1.5b / A100, 4 random 20-config studies): the prediction's median error is
    12-29 % and the searches need 16 % fewer probes and 12 % less load time than from the workload's level; the
    single nearest config (:class:`~sloguard_lib.study.space.ConfigDistance`) predicted worse than no hint (+8 %
    probes): capacity turns on a few knobs (eager mode, ``max_num_seqs``), not on distance over all of them."""
    searched = [t for t in history if t.get("capacity") and t["capacity"]["probes"]]
    if len(searched) < MIN_FIT:
        return None
    from sklearn.ensemble import ExtraTreesRegressor  # here: a trial on a bare GPU box imports no sklearn

    x = np.array([space.encode(t["config"]) for t in searched])
    y = np.log([max(t["capacity"]["level"], 1.0 if t["capacity"]["unit"] == "concurrency" else 0.01)
                for t in searched])
    model = ExtraTreesRegressor(n_estimators=50, random_state=0).fit(x, y)  # seeded: a resumed study starts alike
    return float(math.exp(model.predict(space.encode(config)[None])[0]))


def capacity_map(trials: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The study's answer: each config that was searched -> the load it sustained, with its bracket, best first.
    A config searched more than once keeps the lowest level it held (sustainable means every time) and the
    widest bracket."""
    by_config: dict[str, list[Mapping[str, Any]]] = {}
    for t in trials:
        if t.get("capacity"):
            by_config.setdefault(config_key(t["config"]), []).append(t)
    rows = []
    for rs in by_config.values():
        caps = [r["capacity"] for r in rs]
        tops = [c["interval"][1] for c in caps]
        rows.append({"config": rs[0]["config"], "unit": caps[0]["unit"], "level": min(c["level"] for c in caps),
                     "interval": [min(c["interval"][0] for c in caps),
                                  None if None in tops else max(t for t in tops if t is not None)],
                     "searches": len(rs), "trials": [r["trial"] for r in rs]})
    return sorted(rows, key=lambda r: r["level"], reverse=True)
