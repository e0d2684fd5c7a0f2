"""Capacity mode against goodput tuning, on the simulator: which study finds the config that sustains the most load?

    python benchmarks/capacity.py --seeds 20 --budget 15 [--landscape 120] [--jobs 2]

On the five scenarios of ``benchmarks/optimizers.py`` (their workloads' concurrency is where each search starts;
the highest level searched is 8x it), paired seeds, tba-tpe:

* ``goodput``: today's study (goodput at the workload's concurrency); its recommendation is then searched for
  its capacity, as a user would have to;
* ``capacity``: ``objective="capacity"``, each search starting where the earlier ones predict;
* ``capacity, cold starts``: the same, every search from the workload's concurrency (``MIN_FIT`` out of reach).

A config's *expected capacity* is the median of three cold searches on fresh load seeds; the landscape best is
the highest expected capacity among the ten best of ``--landscape`` random configs (searched once each) and every
config a run recommended. Per run: simulated GPU-seconds of the study, the recommendation's expected capacity as %
of the landscape best, and whether it *holds* (expected >= 95 % of what the study reported for it). Writes
``results/benchmarks/capacity_b{B}.csv``.
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from optimizers import Scenario, chosen, sim_arguments, write_result

from sloguard_lib.engine.sim import SimEngine
from sloguard_lib.hardware import get_gpu, resolve_model
from sloguard_lib.measure import capacity
from sloguard_lib.measure.capacity import CapacitySearch
from sloguard_lib.study.runner import StudySpec, default_space, run_study
from sloguard_lib.study.trial import evaluate

TARGET = 0.99
REACH = 8  # the highest level searched, in multiples of the scenario's concurrency


def top_level(sc: Scenario) -> float:
    return float(REACH * sc.workload.concurrency)


def expected_capacity(sc: Scenario, config: dict[str, Any]) -> float:
    engine = SimEngine(resolve_model(sc.model), get_gpu(sc.gpu))
    search = CapacitySearch(TARGET, max_level=top_level(sc))
    recs = [evaluate(engine, config, sc.workload, sc.slo, 900_000 + i, capacity=search) for i in range(3)]
    levels = [(r.get("capacity") or {}).get("level", 0.0) for r in recs]  # a crash sustains nothing
    return float(statistics.median(levels))


def landscape(sc: Scenario, n: int) -> list[tuple[float, dict[str, Any]]]:
    """(level, config) of the ten best of ``n`` random configs, each searched once."""
    engine = SimEngine(resolve_model(sc.model), get_gpu(sc.gpu))
    space = default_space(sc.model, sc.gpu, sc.workload)
    rng = np.random.default_rng(12345)
    found = []
    for i in range(n):
        config = space.finalize(space.sample(rng))
        rec = evaluate(engine, config, sc.workload, sc.slo, 10_000 + i,
                       capacity=CapacitySearch(TARGET, max_level=top_level(sc)))
        if rec["status"] != "crash":
            found.append((float(rec["capacity"]["level"]), config))
    return sorted(found, key=lambda t: t[0], reverse=True)[:10]


def cold(_: Any = None) -> None:
    capacity.MIN_FIT = 10**9  # this worker's searches all start from the workload's level


def one_run(job: tuple[Scenario, str, int, int]) -> dict[str, Any]:
    sc, variant, seed, budget = job
    objective = "goodput" if variant == "goodput" else "capacity"
    spec = StudySpec(model=sc.model, gpu=sc.gpu, optimizer="tba-tpe", seed=seed, budget=budget, slo=sc.slo,
                     workload=sc.workload, objective=objective, capacity_target=TARGET, capacity_max=top_level(sc))
    with tempfile.TemporaryDirectory() as d:
        result = run_study(spec, d)
    pick = result.best
    expected = expected_capacity(sc, pick["config"]) if pick else 0.0
    reported = pick["mean_utility"] if pick and objective == "capacity" else None
    return {"scenario": sc.name, "variant": variant, "seed": seed, "config": pick["config"] if pick else None,
            "gpu_s": sum(t.get("gpu_seconds") or 0.0 for t in result.trials),
            "probes": sum(len(t["capacity"]["probes"]) for t in result.trials if t.get("capacity")),
            "expected": expected, "reported": reported,
            "holds": None if reported is None else expected >= 0.95 * reported}


def main() -> None:
    ap = sim_arguments(landscape=120)
    ap.add_argument("--budget", type=int, default=15)
    args = ap.parse_args()
    scenarios = chosen(args.scenarios)
    ctx = mp.get_context("spawn")
    with ctx.Pool(args.jobs) as pool:
        tops = dict(zip((s.name for s in scenarios), pool.starmap(landscape, [(s, args.landscape) for s in scenarios]),
                        strict=True))
        rows = pool.map(one_run, [(s, v, seed, args.budget) for s in scenarios for v in ("goodput", "capacity")
                                  for seed in range(args.seeds)], chunksize=1)
        best_of = {s.name: pool.starmap(expected_capacity, [(s, c) for _, c in tops[s.name]]) for s in scenarios}
    with ctx.Pool(args.jobs, initializer=cold) as pool:
        rows += pool.map(one_run, [(s, "capacity, cold starts", seed, args.budget) for s in scenarios
                                   for seed in range(args.seeds)], chunksize=1)
    df = pd.DataFrame(rows)
    best = {s.name: max(max(best_of[s.name], default=0.0), df[df.scenario == s.name].expected.max())
            for s in scenarios}
    df["final_pct"] = [100 * e / best[s] if best[s] else 0.0 for e, s in zip(df.expected, df.scenario, strict=True)]
    write_result(df.drop(columns=["config"]), f"capacity_b{args.budget}.csv")
    print(f"tba-tpe, budget {args.budget}, {args.seeds} seeds, target {TARGET:.0%}; simulated GPU time\n")
    for s in scenarios:
        d = df[df.scenario == s.name]
        print(f"### {s.name} (landscape best {best[s.name]:g} concurrent)\n")
        print("| study | GPU-s per study | probes per study | final % of best capacity | holds within 5 % |")
        print("|---|---|---|---|---|")
        for v in ("goodput", "capacity", "capacity, cold starts"):
            r = d[d.variant == v]
            holds = "-" if v == "goodput" else f"{100 * r.holds.astype(float).mean():.0f} %"
            print(f"| {v} | {r.gpu_s.mean():,.0f} | {r.probes.mean():.0f} | {r.final_pct.mean():.1f} +- "
                  f"{r.final_pct.std():.1f} | {holds} |")
        print()


if __name__ == "__main__":
    main()
