"""Sim-screened tuning with few "real" trials, on the simulator: a wrong sim screens, the reference sim is real.

    python benchmarks/screen.py --seeds 20 [--screen-trials 40] [--jobs 2]

The screen starts from a deliberately mis-calibrated simulator (decode steps 0.6x, prefills 1.6x as long as the
reference's: ``WRONG``), whose error against the reference on random configs is printed first (median |error| of
TTFT p50, ITL p50 and throughput, the figures issue #16 measured at ~30-40 % for the packaged sim against real
H100 points). The "real" engine is the reference sim. Variants, tba-tpe inside, paired seeds, on the five
scenarios of ``benchmarks/optimizers.py``: plain tba-tpe with 15 real trials, and ``screen="sim"`` with 5 and 10.
Per run: the recommendation's expected goodput (15 fresh load seeds) as % of the landscape best, whether it
reaches 95 %, and the real GPU-seconds spent. Writes ``results/benchmarks/screen.csv``.
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

from optimizers import Scenario, chosen, expected_goodput, landscape, sim_arguments, write_result

from sloguard_lib.engine.calibration import DEFAULT
from sloguard_lib.engine.sim import SimEngine
from sloguard_lib.hardware import get_gpu, resolve_model
from sloguard_lib.study.incumbent import incumbent
from sloguard_lib.study.runner import StudySpec, default_space, run_study
from sloguard_lib.study.screen import rescale
from sloguard_lib.study.trial import evaluate

WRONG = rescale(DEFAULT, 0.6, 1.6)
VARIANTS = {"tba-tpe, 15 real": (15, None), "screened, 5 real": (5, "sim"), "screened, 10 real": (10, "sim")}


def screen_error(sc: Scenario, n: int = 30) -> dict[str, float]:
    """Median |wrong / reference - 1| over ``n`` random configs that serve on both."""
    space = default_space(sc.model, sc.gpu, sc.workload)
    rng = np.random.default_rng(4)
    ref, wrong = (SimEngine(resolve_model(sc.model), get_gpu(sc.gpu), cal=c) for c in (DEFAULT, WRONG))
    errs: dict[str, list[float]] = {"ttft_p50_ms": [], "itl_p50_ms": [], "throughput_tok_s": []}
    for i in range(n):
        config = space.finalize(space.sample(rng))
        a, b = (evaluate(e, config, sc.workload, sc.slo, i)["metrics"] for e in (ref, wrong))
        for k, v in errs.items():
            if a.get(k) and b.get(k):
                v.append(abs(b[k] / a[k] - 1))
    return {k: 100 * statistics.median(v) for k, v in errs.items() if v}


def one_run(job: tuple[Scenario, str, int, int, float]) -> dict[str, Any]:
    sc, variant, seed, screen_trials, best = job
    budget, screen = VARIANTS[variant]
    spec = StudySpec(model=sc.model, gpu=sc.gpu, optimizer="tba-tpe", seed=seed, budget=budget, slo=sc.slo,
                     workload=sc.workload, screen=screen, screen_trials=screen_trials,
                     screen_cal=WRONG if screen else None)
    with tempfile.TemporaryDirectory() as d:
        trials = run_study(spec, d).trials
    pick = incumbent(trials)
    final = 100 * expected_goodput(sc, pick["config"], best) / best if pick else 0.0
    phases = [t["phase"] for t in trials]
    return {"scenario": sc.name, "variant": variant, "seed": seed, "final_pct": final, "reached_95": final >= 95,
            "gpu_s": sum(t.get("gpu_seconds") or 0.0 for t in trials), "crashes": sum(t["status"] == "crash"
                                                                                      for t in trials),
            "fell_back": "fallback" in phases, "exploits": phases.count("screen-exploit")}


def main() -> None:
    ap = sim_arguments()
    ap.add_argument("--screen-trials", type=int, default=40)
    args = ap.parse_args()
    scenarios = chosen(args.scenarios)
    ctx = mp.get_context("spawn")
    with ctx.Pool(args.jobs) as pool:
        errors = dict(zip((s.name for s in scenarios), pool.map(screen_error, scenarios), strict=True))
        lands = {land["scenario"]: land for land in pool.starmap(landscape, [(s, args.landscape) for s in scenarios])}
        rows = pool.map(one_run, [(s, v, seed, args.screen_trials, lands[s.name]["best"]) for s in scenarios
                                  for v in VARIANTS for seed in range(args.seeds)], chunksize=1)
    df = pd.DataFrame(rows)
    write_result(df, "screen.csv")
    print(f"{args.seeds} seeds, {args.screen_trials} screen trials per real one; the screen starts wrong by:")
    for name, e in errors.items():
        print(f"- {name}: " + ", ".join(f"{k} {v:.0f} %" for k, v in e.items()))
    print("\n| scenario | variant | final % of best | reach 95 % | real GPU-s | fell back | exploits |")
    print("|---|---|---|---|---|---|---|")
    for s in scenarios:
        for v in VARIANTS:
            r = df[(df.scenario == s.name) & (df.variant == v)]
            print(f"| {s.name} | {v} | {r.final_pct.mean():.1f} +- {r.final_pct.std():.1f} | "
                  f"{100 * r.reached_95.mean():.0f} % | {r.gpu_s.mean():,.0f} | {100 * r.fell_back.mean():.0f} % | "
                  f"{r.exploits.mean():.1f} |")


if __name__ == "__main__":
    main()
