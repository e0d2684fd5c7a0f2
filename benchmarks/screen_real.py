"""A sim-screened real study with few real trials against a full real study of the same setting (issue #21).

    python benchmarks/screen_real.py --against FULL_STUDY.jsonl --budget 5 --rounds 3 --out OUT [--screen-trials 60]
    python benchmarks/screen_real.py --against FULL_STUDY.jsonl --out OUT --report-only

1. ``sloguard tune --screen sim`` with ``--budget`` real trials in the setting of ``--against`` (its model, GPU,
   optimizer, seed, SLO, workload and space, read from its header), on this machine's backend (vllm on a GPU).
2. The two studies' recommendations measured again on fresh servers, ``--rounds`` rounds interleaved (the order
   reversed every other round), each trial on its own prompt seed: one study of enqueued configs, so every
   measurement is a normal trial record. Studies run on different days differ by up to 35 % on the same config
   (results/h100/load_noise), so only this same-session A/B compares the two recommendations.
3. Prints each study's trials (phase, what the screen predicted, what was measured) and the A/B: each
   recommendation's mean goodput with a 95 % t-interval and the paired per-round difference. Writes
   ``summary.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from sloguard_lib.measure.confidence import t_interval
from sloguard_lib.measure.slo import SLO
from sloguard_lib.measure.workload import Workload
from sloguard_lib.study.incumbent import recommend
from sloguard_lib.study.runner import StudySpec, run_study
from sloguard_lib.study.space import SearchSpace, config_key
from sloguard_lib.study.trial_log import read_log


def setting(header: dict[str, Any], **changes: Any) -> StudySpec:
    same: dict[str, Any] = {k: header[k] for k in ("model", "gpu", "optimizer", "seed", "backend")}
    return StudySpec(**(same | {"slo": SLO.from_dict(header["slo"]), "workload": Workload.from_dict(header["workload"]),
                                "space": SearchSpace.from_dict(header["space"])} | changes))


def ab_order(a: dict[str, Any], b: dict[str, Any], rounds: int) -> tuple[dict[str, Any], ...]:
    return tuple(c for r in range(rounds) for c in ((a, b) if r % 2 == 0 else (b, a)))


def show(title: str, trials: list[dict[str, Any]]) -> None:
    print(f"\n== {title}: {len(trials)} trials")
    for t in trials:
        predicted = (t.get("screen") or {}).get("predicted_utility")
        guess = "" if predicted is None else f" predicted {predicted:8,.0f}"
        print(f"{t['trial']:3d} {t['phase']:15s} {t['status']:14s} goodput {t['utility'] or 0:8,.0f}{guess}  "
              f"{t['config']}")


def report(full: Path, screened: Path, ab: Path) -> dict[str, Any]:
    studies = {"full": read_log(full).trials, "screened": read_log(screened).trials}
    picks = {name: recommend(trials) for name, trials in studies.items()}
    for name, trials in studies.items():
        show(f"{name} study", trials)
    ab_trials = read_log(ab).trials
    show("A/B on fresh servers", ab_trials)
    out: dict[str, Any] = {"studies": {}}
    for name, pick in picks.items():
        assert pick is not None, f"the {name} study has no feasible config"
        key = config_key(pick["config"])
        values = [t["utility"] or 0.0 for t in ab_trials if config_key(t["config"]) == key]
        lo, hi = t_interval(values) if len(values) > 1 else (values[0], values[0])
        out["studies"][name] = {"real_trials": len(studies[name]), "config": pick["config"],
                                "study_goodput": pick["mean_utility"], "ab_goodputs": values,
                                "ab_mean": statistics.fmean(values), "ab_ci95": [lo, hi]}
    f, s = out["studies"]["full"]["ab_goodputs"], out["studies"]["screened"]["ab_goodputs"]
    same = config_key(picks["full"]["config"]) == config_key(picks["screened"]["config"])  # type: ignore[index]
    if not same:
        diffs = [100 * (b / a - 1) for a, b in zip(f, s, strict=False)]
        lo, hi = t_interval(diffs) if len(diffs) > 1 else (diffs[0], diffs[0])
        out["screened_vs_full_pct"] = {"mean": statistics.fmean(diffs), "ci95": [lo, hi], "rounds": len(diffs)}
    print("\n| study | real trials | recommendation | its study's goodput | re-measured (mean, 95 % CI) |")
    print("|---|---|---|---|---|")
    for name, d in out["studies"].items():
        lo, hi = d["ab_ci95"]
        print(f"| {name} | {d['real_trials']} | `{json.dumps(d['config'])}` | {d['study_goodput']:,.0f} | "
              f"{d['ab_mean']:,.0f} [{lo:,.0f}, {hi:,.0f}] (n={len(d['ab_goodputs'])}) |")
    if same:
        print("\nboth studies recommend the same config")
    else:
        d = out["screened_vs_full_pct"]
        print(f"\nscreened vs full, paired per round: {d['mean']:+.1f} % [{d['ci95'][0]:+.1f}, {d['ci95'][1]:+.1f}]"
              f" over {d['rounds']} rounds")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--against", type=Path, required=True, help="the full real study's JSONL log")
    ap.add_argument("--budget", type=int, default=5, help="real trials of the screened study")
    ap.add_argument("--screen-trials", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=3, help="A/B rounds: each recommendation once a round")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--stop-after-s", type=float, default=None, help="start no trial after this long (resumable)")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    header = read_log(args.against).header
    screened = setting(header, budget=args.budget, screen="sim", screen_trials=args.screen_trials)
    if not args.report_only:
        result = run_study(screened, args.out / "screened", resume=True, stop_after_s=args.stop_after_s)
        if len(result.trials) < args.budget:
            raise SystemExit("stopped before the screened study ended: run again to resume")
    a, b = recommend(read_log(args.against).trials), recommend(read_log(args.out / "screened"
                                                                        / f"{screened.study_id}.jsonl").trials)
    assert a is not None and b is not None
    ab = setting(header, optimizer="random", budget=2 * args.rounds, enqueue=ab_order(a["config"], b["config"],
                                                                                         args.rounds))
    if not args.report_only:
        run_study(ab, args.out / "ab", resume=True, stop_after_s=args.stop_after_s)
    summary = report(args.against, args.out / "screened" / f"{screened.study_id}.jsonl",
                     args.out / "ab" / f"{ab.study_id}.jsonl")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
