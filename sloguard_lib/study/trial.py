"""One trial's contact with a backend: launch -> load -> metrics -> SLO verdict, as a log record.

Kept apart from the study loop so that anything that evaluates configs (``sloguard bench``, the
calibration grid on a GPU machine, the study runner) judges them identically, and so that it imports
nothing but the engine protocol (no optimizer libraries needed on a bare GPU box).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

from sloguard_lib.engine.base import Engine, EngineCrash, Server
from sloguard_lib.errors import InputError
from sloguard_lib.measure.capacity import CapacitySearch, Probe, judged
from sloguard_lib.measure.capacity import summary as capacity_summary
from sloguard_lib.measure.confidence import load_goodput, trial_interval
from sloguard_lib.measure.early_stop import Monitor, StopRule
from sloguard_lib.measure.metrics import LoadResult, RequestResult, pooled, summarize
from sloguard_lib.measure.slo import SLO
from sloguard_lib.measure.workload import Workload
from sloguard_lib.study.space import Config


def trial_seed(seed: int, trial: int) -> int:
    return seed * 1_000_003 + trial


def evaluate(
    engine: Engine, config: Config, workload: Workload, slo: SLO, seed: int, label: str = "",
    stop: StopRule | None = None, capacity: CapacitySearch | None = None,
) -> dict[str, Any]:
    """Launch one server, load it, and judge it: the part of a trial that touches the backend. An interrupt
    (Ctrl-C, SIGTERM, SIGHUP) propagates after the server is closed: a partial trial is never a record.
    ``stop`` ends the loads once the verdict is decided (:mod:`sloguard_lib.measure.early_stop`); the record's
    ``early_stop`` then says why and when. ``capacity`` instead searches the highest load the server sustains
    (:mod:`sloguard_lib.measure.capacity`): the record's ``capacity``, its utility that load."""
    t0 = time.perf_counter()
    rec: dict[str, Any] = {"config": config, "crash_class": None, "crash_message": None, "metrics": {},
                           "utility": None, "violated": []}
    try:
        server = engine.launch(config, trial_seed=seed, label=label)
    except EngineCrash as crash:
        return rec | _crash_fields(crash) | {"engine_start_s": crash.elapsed_s, "gpu_seconds": crash.elapsed_s,
                                             "wall_s": time.perf_counter() - t0,
                                             **({"engine_info": {"phases": crash.phases}} if crash.phases else {})}
    info = server.info
    # ``engine_info`` is the server's own dict: ``close()`` completes its ``phases`` (load, teardown) in place
    rec |= {"engine_start_s": info.start_s, "engine_version": info.engine_version,
            "kv_cache_tokens": info.kv_cache_tokens, "engine_info": info.extra}
    loads: list[LoadResult] = []  # ``repeats`` loads, each on its own prompt seed
    probes: list[Probe] = []  # or, for capacity, the probes' loads
    monitor = stop.monitor() if stop and capacity is None else None
    try:
        if capacity is not None:
            capacity.run(server, workload, slo, probes)
        else:
            _run_loads(server, workload, monitor, loads)
    except EngineCrash as crash:
        spent = info.start_s + _loaded_s(loads) + _loaded_s([p.load for p in probes])
        return rec | _crash_fields(crash) | {"gpu_seconds": spent + crash.elapsed_s, "wall_s": time.perf_counter() - t0}
    except InputError:  # the user's input, the same for every trial (replay has no load at that level): stop
        raise
    except Exception as e:  # a harness failure: record it, keep the study alive
        return rec | {"status": "error", "crash_message": f"{type(e).__name__}: {e}",
                      "gpu_seconds": info.start_s + _loaded_s(loads) + _loaded_s([p.load for p in probes]),
                      "wall_s": time.perf_counter() - t0}
    finally:
        server.close()
    if capacity is not None:
        loads = [judged(probes).load]  # the metrics are those of the highest load sustained
    load = pooled(loads)
    metrics = summarize(load)
    verdict = slo.evaluate(load, metrics)
    lo, hi = trial_interval(loads, slo, seed)
    metrics |= {"goodput_tok_s": verdict.goodput_tok_s, "goodput_req_s": verdict.goodput_req_s,
                "slo_attainment": verdict.attainment, **verdict.by_definition}
    out = rec | {
        "status": "ok" if verdict.feasible else "slo_violation", "metrics": metrics, "utility": verdict.utility,
        "violated": verdict.violated, "slo_usage": verdict.usage, "load_s": load.duration_s,
        "goodput_loads_tok_s": [load_goodput(x, slo) for x in loads], "goodput_ci95_tok_s": [lo, hi],
        "gpu_seconds": info.start_s + load.duration_s,
        "wall_s": time.perf_counter() - t0,
        **({"early_stop": monitor.record()} if monitor and monitor.reason else {}),
    }
    if capacity is None:
        return out
    cap = capacity_summary(probes, capacity, workload)  # the objective is the load sustained, not this goodput
    spent = _loaded_s([p.load for p in probes])
    return out | {"capacity": cap, "utility": cap["level"], "status": "ok" if cap["level"] else "slo_violation",
                  "violated": [] if cap["level"] else verdict.violated, "load_s": spent,
                  "gpu_seconds": info.start_s + spent}


def _run_loads(server: Server, workload: Workload, monitor: Monitor | None, loads: list[LoadResult]) -> None:
    for i in range(workload.repeats):
        wl = dataclasses.replace(workload, seed=workload.seed + i)
        if monitor is None:
            loads.append(server.run_load(wl))
            continue
        loads.append(server.run_load(wl, until=functools.partial(_observe, monitor, _loaded_s(loads))))
        if monitor.reason is not None:
            break


def _observe(monitor: Monitor, offset_s: float, r: RequestResult) -> bool:
    return monitor.observe(r, offset_s + r.end_s)


def _loaded_s(loads: list[LoadResult]) -> float:
    return sum(load.duration_s for load in loads)


def _crash_fields(crash: EngineCrash) -> dict[str, Any]:
    return {"status": "crash", "crash_class": crash.crash_class, "crash_phase": crash.phase,
            "crash_message": crash.message, "log_excerpt": crash.log_excerpt}
