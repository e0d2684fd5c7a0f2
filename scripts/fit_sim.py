"""Re-fit the simulator's latency constants to the recorded real points (sloguard_lib/data/h100/calibration.jsonl).

    python scripts/fit_sim.py [--iters 300]

Minimises the mean squared log-error of every *target* row (see sloguard_lib/fidelity.py) over the
overhead and efficiency constants with Nelder-Mead, then prints the fitted values to paste into
sloguard_lib/engine/calibration.py. Memory and start-up constants are read straight off vLLM's logs and
are not fitted here.
"""

from __future__ import annotations

import argparse
import dataclasses
import math

import numpy as np
from scipy.optimize import minimize

from sloguard_lib.engine.calibration import DEFAULT
from sloguard_lib.fidelity import compare, load_points, summary

FITTED = ("request_overhead_s", "step_overhead_s", "per_seq_overhead_s", "eager_per_layer_s",
          "piecewise_per_layer_s", "compute_eff", "bw_eff", "attn_compute_eff", "hiccup_factor", "admit_serial_s",
          "stream_token_s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=300)
    args = ap.parse_args()
    points = [p for p in load_points() if p["status"] == "ok"]
    x0 = np.log([getattr(DEFAULT, k) for k in FITTED])

    def loss(x: np.ndarray) -> float:
        cal = dataclasses.replace(DEFAULT, **{k: float(math.exp(v)) for k, v in zip(FITTED, x, strict=True)})
        errs = [math.log(r.sim / r.real) for r in compare(points, cal) if r.is_target and r.metric != "kv_cache_tokens"
                and isinstance(r.sim, float) and isinstance(r.real, float) and r.sim > 0]
        return float(np.mean(np.square(errs)))

    print(f"start loss {loss(x0):.4f}")
    res = minimize(loss, x0, method="Nelder-Mead", options={"maxiter": args.iters, "xatol": 1e-3, "fatol": 1e-5})
    fitted = {k: float(math.exp(v)) for k, v in zip(FITTED, res.x, strict=True)}
    print(f"final loss {res.fun:.4f}")
    for k, v in fitted.items():
        print(f"    {k} = {v:.4g}")
    for metric, v in summary(compare(points, dataclasses.replace(DEFAULT, **fitted))).items():
        print(metric, v)


if __name__ == "__main__":
    main()
