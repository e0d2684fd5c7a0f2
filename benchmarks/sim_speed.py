"""CPU seconds per simulated trial (target <= 1 s), over the default space and a few workloads.

    python benchmarks/sim_speed.py [--trials 30]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import numpy as np

from sloguard_lib.engine import EngineCrash
from sloguard_lib.engine.sim import SimEngine
from sloguard_lib.hardware import get_gpu, resolve_model
from sloguard_lib.measure.workload import Workload
from sloguard_lib.study.runner import default_space

WORKLOADS = {
    "default (c=32, 200 x 512/128)": Workload(),
    "heavy (c=128, 1000 x 1024/256)": Workload(concurrency=128, num_requests=1000, input_len=1024, output_len=256),
    "long context (c=16, 200 x 3000/512)": Workload(concurrency=16, num_requests=200, input_len=3000, output_len=512),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=30)
    args = ap.parse_args()
    engine = SimEngine(resolve_model("qwen2-1.5b"), get_gpu("a100-40gb"))
    space = default_space("qwen2-1.5b", "a100-40gb")
    rng = np.random.default_rng(0)
    print(f"{'workload':40s} {'median s':>9s} {'max s':>7s} {'trials':>6s}")
    for name, wl in WORKLOADS.items():
        times = []
        for i in range(args.trials):
            config = space.finalize(space.sample(rng) | {"max_model_len": 4096})
            t0 = time.process_time()
            with contextlib.suppress(EngineCrash):  # a crash is a (cheap) trial too
                engine.launch(config, trial_seed=i).run_load(wl)
            times.append(time.process_time() - t0)
        print(f"{name:40s} {statistics.median(times):9.3f} {max(times):7.3f} {len(times):6d}")
    print("target: <= 1 CPU-second per trial")


if __name__ == "__main__":
    main()
