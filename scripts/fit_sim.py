"""Re-fit the simulator's latency constants to the recorded real H100 points (``fidelity.FIT_FILES``).

    python scripts/fit_sim.py [--iters 200] [--data FILE ...] [--start-spread F]

Minimises the mean squared log-error of every *target* row (see sloguard_lib/analysis/fidelity.py) over the
overhead and efficiency constants with Nelder-Mead (:func:`sloguard_lib.analysis.fidelity.fit`), then prints the fitted
values to paste into sloguard_lib/engine/calibration.py. Memory and start-up constants are read straight off
vLLM's logs and are not fitted here. ``--start-spread F`` starts from the packaged constants each moved by up to
a factor F (``fidelity.start_point``): whether the fit finds its way back says whether it converges.
``benchmarks/sim_fidelity.py --kfold K`` scores the same fit held out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sloguard_lib.analysis.fidelity import FITTED, compare, fit, fit_data, load_points, start_point, summary


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--data", nargs="+", default=fit_data(Path(__file__).resolve().parents[1]), metavar="FILE",
                    help="calibration files and real studies' trial logs (default: fidelity.FIT_FILES)")
    ap.add_argument("--start-spread", type=float, default=1.0, metavar="F",
                    help="start from the packaged constants each times a factor in [1/F, F] (default 1: from them)")
    args = ap.parse_args()
    points = [p for path in args.data for p in load_points(path)]
    cal = fit(points, start_point(args.start_spread), iters=args.iters)
    for k in FITTED:
        print(f"    {k} = {getattr(cal, k):.4g}")
    for metric, v in summary(compare(points, cal)).items():
        print(metric, v)


if __name__ == "__main__":
    main()
