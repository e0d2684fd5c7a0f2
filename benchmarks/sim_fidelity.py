"""Simulator vs every real H100 point its constants are fitted to (``fidelity.FIT_FILES``: 42 configs, 85 loads).

    python benchmarks/sim_fidelity.py [--data FILE ...] [--per-machine] [--kfold 5 [--iters 30] [--jobs 5]
                                      [--start-spread 1.5] [--method trf|nelder-mead]]

``--data`` takes calibration files and real studies' trial logs alike (a study's trials are the configs a tuner
actually visits; :func:`sloguard_lib.analysis.fidelity.study_points` says which of them count), e.g.
``results/h100/multiseed/*.jsonl`` for the #17 trials no fit has seen. A capacity study's log
(``results/h100/capacity/*.jsonl``) is scored by the capacity the sim finds for each of its configs
(``fidelity.capacity_rows``; in sample, not in the k-fold).

Prints sim, real and relative error per point and metric, then the median and worst |error| per metric
(only target rows, see sloguard_lib/analysis/fidelity.py) and the crash-verdict agreement. These score the simulator on
the points its constants were fitted to. ``--kfold K`` also scores it held out: the points of each fold of
configs against a simulator re-fitted (``scripts/fit_sim.py``'s fit) to the other folds alone, each metric beside
the noise floors: the median coefficient of variation of repeated loads of one config and load shape on one
machine, and of the per-machine means where several machines ran it (lent H100s differ: eager decode 1.66x), and
the repeat errors that are the bar: the median |error| of predicting each repeated load by the mean of its
config's other loads (on any machine; on its own).
Each fold's fit starts from the packaged constants, which saw every fold; ``--start-spread F`` starts it from
them each moved by up to a factor F instead, so a fit that stops early cannot hand the test fold's data on.
``--per-machine`` replays every point on the host speed its machine's *other* configs fit best
(``fidelity.host_fitted``: what a study learns of its own server from its earlier trials) and scores that.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sloguard_lib.analysis.fidelity import (
    FIT_METHODS,
    SPLIT,
    capacity_rows,
    compare,
    fit_data,
    held_out,
    host_fitted,
    load_points,
    noise_floor,
    start_point,
    summary,
)
from sloguard_lib.engine.calibration import DEFAULT, H100_REFERENCE, SimCalibration


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", nargs="+", default=fit_data(Path(__file__).resolve().parents[1]), metavar="FILE")
    ap.add_argument("--kfold", type=int, default=0, metavar="K", help="also score K-fold held out by config")
    ap.add_argument("--iters", type=int, default=30,
                    help="steps of each trust-region run of a fold's fit, or its Nelder-Mead iterations")
    ap.add_argument("--method", choices=FIT_METHODS, default="trf", help="how each fold is fitted")
    ap.add_argument("--jobs", type=int, default=1, help="folds fitted at once, one process each")
    ap.add_argument("--start-spread", type=float, default=1.0, metavar="F",
                    help="start each fold's fit from the packaged constants each times a factor in [1/F, F]")
    ap.add_argument("--per-machine", action="store_true",
                    help="replay each point on the host speed of its machine's other configs")
    args = ap.parse_args()
    points = [p for path in args.data for p in load_points(path)]
    rows = (host_fitted(points) if args.per_machine else compare(points)) + [
        r for path in args.data for r in capacity_rows(path)]
    print(f"{'point':30s} {'conc':>4s} {'metric':16s} {'sim':>12s} {'real':>12s} {'error':>8s} {'host':>5s}")
    for r in rows:
        err = "" if r.rel_error is None else f"{r.rel_error:+8.1%}"
        sim = r.sim if isinstance(r.sim, str) else f"{r.sim:12.1f}"
        real = r.real if isinstance(r.real, str) else f"{r.real:12.1f}"
        flag = f"  ({r.why_not_target}: not a target)" if r.why_not_target else ""
        print(f"{r.name:30s} {r.concurrency or '':>4} {r.metric:16s} {sim:>12s} {real:>12s} {err:>8s} {r.host:5.2f}"
              f"{flag}")
    s = summary(rows)
    print("\nmetric             median |err|   worst |err|   points")
    for metric, v in s.items():
        if isinstance(v, dict):
            print(f"{metric:18s} {v['median']:12.1%} {v['worst']:13.1%} {v['n']:8d}")
    if s["crash_agreement"] is not None:
        print(f"crash verdict agreement: {s['crash_agreement']:.0%}")
    readme_figures(points)
    noise = noise_floor(points)
    print("\nnoise floors: " + "; ".join(f"{m} {floors(n)}" for m, n in noise.items()))
    if args.kfold:
        kfold(points, args.kfold, args.iters, args.jobs, args.per_machine, noise, start_point(args.start_spread),
              args.method)


def floors(n: dict[str, float]) -> str:
    one = f"{n['cv']:.1%} on one machine ({n['groups']:.0f} groups)" if "cv" in n else "no repeats on one machine"
    many = (f"{n['cv_machines']:.1%} across machines ({n['machine_groups']:.0f})" if "cv_machines" in n
            else "no config on two machines")
    return f"CV {one}, {many}; {repeat(n)}"


def repeat(n: dict[str, float]) -> str:
    """The repeat errors (``fidelity.noise_floor``): the floors on the scale of a median |error|."""
    across = (f"repeat error {n['repeat_err']:.1%} ({n['repeat_loads']:.0f} loads)" if "repeat_err" in n
              else "no repeated loads")
    one = (f"{n['repeat_err_machine']:.1%} on one machine ({n['repeat_loads_machine']:.0f})"
           if "repeat_err_machine" in n else "none on one machine")
    return f"{across}, {one}"


def kfold(points: list[dict], k: int, iters: int, jobs: int, per_machine: bool,  # type: ignore[type-arg]
          noise: dict[str, dict[str, float]], start: SimCalibration, method: str) -> None:
    """The held-out table. Its bar is 15 % or the noise floor where that is larger, the floor being the repeat
    error (the median |error| of predicting a load by its config's other loads): across machines for a simulator
    that knows nothing of the machine, on one machine with ``--per-machine``."""
    s = summary(held_out(points, k, iters=iters, jobs=jobs, per_machine=per_machine, start=start, method=method))
    key = "repeat_err_machine" if per_machine else "repeat_err"
    where = ", each point on its machine's host speed" if per_machine else ""
    print(f"\nheld out, {k}-fold by config ({len({str(p['config']) for p in points})} configs){where}"
          f"{'' if start == DEFAULT else ', each fit started off the packaged constants'}, fitted by {method}:")
    print("| metric | median abs. error | worst | points | noise floors | target |")
    print("|---|---|---|---|---|---|")
    for metric, v in s.items():
        if not isinstance(v, dict):
            continue
        n = noise.get(metric, {})
        floor = n.get(key, 0.0)
        verdict = "met" if v["median"] <= max(0.15, floor) else "not met"
        if floor > 0.15:
            verdict += " (noise floor)"
        if metric in SPLIT:
            verdict = "diagnostic"
        print(f"| {metric} | {v['median']:.1%} | {v['worst']:.1%} | {v['n']} | {floors(n) if n else 'none'} "
              f"| {verdict} |")
    if s["crash_agreement"] is not None:
        print(f"| crash verdict | {s['crash_agreement']:.0%} agreement | | | | "
              f"{'met' if s['crash_agreement'] == 1 else 'not met'} |")


def readme_figures(points: list[dict]) -> None:  # type: ignore[type-arg]
    """The figures in shared/gpu/README.md next to our own real measurement of the same config."""
    ours: dict[int, dict[str, float]] = {}
    for p in points:  # the first (least prefix-cached) reference load at each concurrency
        if p.get("name") == "reference" and p["status"] == "ok":
            ours.setdefault(p["workload"]["concurrency"], p["metrics"])
    print("\nshared/gpu/README.md figures (another harness) vs this harness on the same server config:")
    for ref in H100_REFERENCE:
        c = int(ref["concurrency"] or 0)
        for key, value in ref.items():
            if key != "concurrency" and value is not None and c in ours:
                print(f"  c={c:<3d} {key:18s} README {float(value):9.1f}   ours {ours[c][key]:9.1f}")


if __name__ == "__main__":
    main()
