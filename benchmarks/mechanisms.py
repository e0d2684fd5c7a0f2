"""Early stop and validated recommendations against plain tba-tpe, on the simulator.

    python benchmarks/mechanisms.py --seeds 20 --budget 15 [--validate 2] [--jobs 2]

Variants, each a real ``run_study`` on the five scenarios of ``benchmarks/optimizers.py``, paired seeds:

* ``tba-tpe``: the baseline, ``budget`` trials, recommendation = the incumbent (highest mean utility);
* ``+early-stop``: the same with ``early_stop=True`` (:mod:`sloguard_lib.measure.early_stop`);
* ``+validate K``: ``budget`` trials, then the 3 finalists re-measured K times each, recommendation = the best
  lower bound over those (:func:`sloguard_lib.study.incumbent.recommend`);
* ``tba-tpe, budget + 3K``: as many trials as ``+validate K`` spends, all on search: is validating worth its GPU?
* ``+early-stop +validate K``.

Per run: simulated GPU-seconds of the study (start-ups and loads, as the sim reports them), the final
recommendation's expected goodput (mean over 15 fixed fresh load seeds, as the optimizer benchmark scores) as % of
the landscape best, and whether the recommendation *holds*: its expected goodput is at least 95 % of the goodput
the study reported for it (the mean it was ranked by). Prints one markdown table per scenario and writes
``results/benchmarks/mechanisms_b{B}_v{K}.csv``.
"""

from __future__ import annotations

import multiprocessing as mp
import sys
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from optimizers import Scenario, chosen, expected_goodput, landscape, sim_arguments, write_result

from sloguard_lib.study.runner import FINALISTS, StudySpec, run_study

HOLDS = 0.95  # a recommendation holds when re-measured at >= 95 % of what the study reported


def variants(budget: int, k: int) -> dict[str, dict[str, Any]]:
    return {"tba-tpe": {"budget": budget}, "+early-stop": {"budget": budget, "early_stop": True},
            f"+validate {k}": {"budget": budget, "validate": k},
            f"tba-tpe, budget {budget + FINALISTS * k}": {"budget": budget + FINALISTS * k},
            f"+early-stop +validate {k}": {"budget": budget, "early_stop": True, "validate": k}}


def one_run(job: tuple[Scenario, str, dict[str, Any], int, float]) -> dict[str, Any]:
    sc, name, options, seed, best = job
    spec = StudySpec(model=sc.model, gpu=sc.gpu, optimizer="tba-tpe", seed=seed, slo=sc.slo, workload=sc.workload,
                     **options)
    with tempfile.TemporaryDirectory() as d:
        result = run_study(spec, d)
    pick = result.best
    expected = expected_goodput(sc, pick["config"]) if pick else 0.0
    reported = pick["mean_utility"] if pick else 0.0
    return {"scenario": sc.name, "variant": name, "seed": seed, "trials": len(result.trials),
            "gpu_s": sum(t.get("gpu_seconds") or 0.0 for t in result.trials),
            "load_s": sum(t.get("load_s") or 0.0 for t in result.trials),
            "early_stops": sum("early_stop" in t for t in result.trials),
            "final_pct": 100 * expected / best, "reported_pct": 100 * reported / best,
            "holds": bool(pick) and expected >= HOLDS * reported}


def table(d: pd.DataFrame, sc: Scenario, best: float, order: list[str]) -> str:
    lines = [f"### {sc.name} (landscape best {best:,.0f} tok/s)", "",
             "| variant | trials | GPU-s per study | load-s per study | early stops | final % of best | "
             "reported % | holds within 5 % |", "|---|---|---|---|---|---|---|---|"]
    for name in order:
        v = d[d.variant == name]
        lines.append(f"| {name} | {v.trials.mean():.0f} | {v.gpu_s.mean():,.0f} | {v.load_s.mean():,.0f} | "
                     f"{v.early_stops.mean():.1f} | {v.final_pct.mean():.1f} +- {v.final_pct.std():.1f} | "
                     f"{v.reported_pct.mean():.1f} | {100 * v.holds.mean():.0f} % |")
    return "\n".join(lines)


def main() -> None:
    ap = sim_arguments()
    ap.add_argument("--budget", type=int, default=15)
    ap.add_argument("--validate", type=int, default=2)
    args = ap.parse_args()
    scenarios = chosen(args.scenarios)
    kinds = variants(args.budget, args.validate)
    ctx = mp.get_context("spawn")
    with ctx.Pool(args.jobs) as pool:
        lands = {land["scenario"]: land for land in pool.starmap(landscape, [(s, args.landscape) for s in scenarios])}
        jobs = [(s, name, options, seed, lands[s.name]["best"])
                for s in scenarios for name, options in kinds.items() for seed in range(args.seeds)]
        rows = pool.map(one_run, jobs, chunksize=1)
    df = pd.DataFrame(rows)
    write_result(df, f"mechanisms_b{args.budget}_v{args.validate}.csv")
    print(f"tba-tpe, budget {args.budget}, {args.seeds} seeds; simulated GPU time\n")
    for s in scenarios:
        print(table(df[df.scenario == s.name], s, lands[s.name]["best"], list(kinds)) + "\n")


if __name__ == "__main__":
    main()
