"""Parallel trials on the simulator: how much sooner N workers reach a good config, and what it costs in quality.

    python benchmarks/parallel.py --seeds 20 --budget 15 --workers 1 2 4 8 [--optimizer tba-tpe] [--jobs 2]

Each run is a real ``run_study`` with ``Parallel(workers=N, virtual=True)``: the driver, the pending-aware asks
and the log are exactly those of ``sloguard tune --workers N``, but the N GPUs are simulated
(:class:`sloguard_lib.study.workers.VirtualPool`): a trial finishes ``gpu_seconds`` (the sim's start-up + load time)
after it started, so wall-clock is simulated GPU time, not this machine's CPU. Scored as in
``benchmarks/optimizers.py`` (its scenarios, landscape best and expected goodput of the incumbent): per run, the
simulated wall time until the incumbent is within 5 % of the landscape best ("time to 95 %"), and the final
incumbent's % of the best at the equal trial budget. Prints a markdown table per scenario with each worker
count's speed-up over one worker (ratio of median times to 95 % over the seeds that reached it) and writes
``results/benchmarks/parallel_b{B}.csv``.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from optimizers import Scenario, chosen, expected_goodput, landscape, sim_arguments, write_result

from sloguard_lib.analysis import stats
from sloguard_lib.study.incumbent import incumbent
from sloguard_lib.study.runner import Parallel, StudySpec, run_study
from sloguard_lib.study.space import config_key


def one_run(job: tuple[Scenario, str, int, int, int, float]) -> dict[str, Any]:
    sc, optimizer, workers, seed, budget, best = job
    spec = StudySpec(model=sc.model, gpu=sc.gpu, optimizer=optimizer, seed=seed, budget=budget, slo=sc.slo,
                     workload=sc.workload)
    with tempfile.TemporaryDirectory() as d:
        trials = run_study(spec, d, parallel=Parallel(workers=workers, virtual=True)).trials  # in finish order
    expected: dict[str, float] = {}
    curve = []
    for n, t in enumerate(trials):
        if t["status"] == "ok" and config_key(t["config"]) not in expected:
            expected[config_key(t["config"])] = expected_goodput(sc, t["config"], best)
        pick = incumbent(trials[:n + 1])
        curve.append(100 * expected[config_key(pick["config"])] / best if pick is not None else 0.0)
    ends = [t["virtual_end_s"] for t in trials]
    reach = next((end for end, pct in zip(ends, curve, strict=True) if pct >= 95.0), math.nan)
    return {"scenario": sc.name, "optimizer": optimizer, "workers": workers, "seed": seed, "budget": budget,
            "final_pct": curve[-1], "time_to_95_s": reach, "wall_s": ends[-1], "gpu_s": sum(t["gpu_seconds"] or 0.0
                                                                                             for t in trials)}


def table(d: pd.DataFrame, sc: Scenario, best: float) -> str:
    lines = [f"### {sc.name} (landscape best {best:,.0f} tok/s)", "",
             "| workers | final % of best | reach 95 % | time to 95 % (s, median) | speed-up vs 1 | study wall (s) | "
             "p final vs 1 |", "|---|---|---|---|---|---|---|"]
    one = d[d.workers == 1]
    t1 = float(np.nanmedian(one["time_to_95_s"])) if one["time_to_95_s"].notna().any() else math.nan
    for w, g in d.groupby("workers"):
        m, s = stats.mean_std(list(g["final_pct"]))
        t = float(np.nanmedian(g["time_to_95_s"])) if g["time_to_95_s"].notna().any() else math.nan
        p = "—" if w == 1 else f"{stats.mann_whitney_p(list(g['final_pct']), list(one['final_pct'])):.3g}"
        lines.append(f"| {w} | {m:.1f} ± {s:.1f} | {100 * g['time_to_95_s'].notna().mean():.0f}% | {t:,.0f} | "
                     f"{t1 / t:.1f}x | {g['wall_s'].median():,.0f} | {p} |")
    return "\n".join(lines)


def main() -> None:
    ap = sim_arguments()
    ap.add_argument("--budget", type=int, default=15)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--optimizer", default="tba-tpe")
    args = ap.parse_args()
    scenarios = chosen(args.scenarios)
    ctx = mp.get_context("spawn")
    with ctx.Pool(args.jobs) as pool:
        lands = {land["scenario"]: land for land in pool.starmap(landscape, [(s, args.landscape) for s in scenarios])}
        jobs = [(s, args.optimizer, w, seed, args.budget, lands[s.name]["best"])
                for s in scenarios for w in args.workers for seed in range(args.seeds)]
        rows = pool.map(one_run, jobs, chunksize=1)
    df = pd.DataFrame(rows)
    write_result(df, f"parallel_b{args.budget}.csv")
    print(f"{args.optimizer}, budget {args.budget}, {args.seeds} seeds; simulated GPU time\n")
    for s in scenarios:
        print(table(df[df.scenario == s.name], s, lands[s.name]["best"]) + "\n")


if __name__ == "__main__":
    main()
