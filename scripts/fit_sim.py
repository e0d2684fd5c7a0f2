"""Re-fit the simulator's latency constants to the recorded real H100 points (``fidelity.FIT_FILES``).

    python scripts/fit_sim.py [--iters 30] [--method trf|nelder-mead] [--data FILE ...] [--start-spread F]

Fits the overhead and efficiency constants to every fit-target row (see sloguard_lib/analysis/fidelity.py): trust-region
least squares on the log-errors with a soft-L1 loss by default, or the mean squared log-error by Nelder-Mead
(``--method nelder-mead --iters 200``, what fitted the packaged constants; :func:`sloguard_lib.analysis.fidelity.fit`
says why and what each reached), then prints the fitted
values to paste into sloguard_lib/engine/calibration.py. Memory and start-up constants are read straight off
vLLM's logs and are not fitted here. ``--start-spread F`` starts from the packaged constants each moved by up to
a factor F (``fidelity.start_point``): whether the fit finds its way back says whether it converges.
``benchmarks/sim_fidelity.py --kfold K`` scores the same fit held out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sloguard_lib.analysis.fidelity import (
    FIT_METHODS,
    FITTED,
    compare,
    fit,
    fit_data,
    load_points,
    start_point,
    summary,
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=30, help="steps of each trust-region run, or Nelder-Mead iterations")
    ap.add_argument("--method", choices=FIT_METHODS, default="trf")
    ap.add_argument("--data", nargs="+", default=fit_data(Path(__file__).resolve().parents[1]), metavar="FILE",
                    help="calibration files and real studies' trial logs (default: fidelity.FIT_FILES)")
    ap.add_argument("--start-spread", type=float, default=1.0, metavar="F",
                    help="start from the packaged constants each times a factor in [1/F, F] (default 1: from them)")
    args = ap.parse_args()
    points = [p for path in args.data for p in load_points(path)]
    cal = fit(points, start_point(args.start_spread), iters=args.iters, method=args.method)
    for k in FITTED:
        print(f"    {k} = {getattr(cal, k):.4g}")
    for metric, v in summary(compare(points, cal)).items():
        print(metric, v)


if __name__ == "__main__":
    main()
