"""How far apart real loads of one config are, machine by machine: the repeats behind the noise floors.

    python scripts/repeat_spread.py [--metric itl_p99_ms] [--data FILE ...]

For every (config, load shape) measured more than once (``fidelity.repeat_groups``: over ``fidelity.FIT_FILES`` and
the #17 trials of ``results/h100/multiseed/`` by default), one line per machine with its loads' values of the
metric, then the group's spread (largest / smallest). A simulator that knows a config but not which machine runs
it cannot be closer to every one of these values than they are to each other.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sloguard_lib.analysis.fidelity import METRICS, fit_data, load_points, repeat_groups

ROOT = Path(__file__).resolve().parents[1]
SHORT = {"max_num_seqs": "seqs", "max_num_batched_tokens": "budget", "enable_chunked_prefill": "chunked",
         "enforce_eager": "eager", "enable_prefix_caching": "prefix", "gpu_memory_utilization": "gmu",
         "max_model_len": "len"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--metric", default="itl_p99_ms", choices=METRICS)
    ap.add_argument("--data", nargs="+", metavar="FILE",
                    default=fit_data(ROOT) + sorted(str(f) for f in (ROOT / "results/h100/multiseed").glob("*.jsonl")))
    args = ap.parse_args()
    points = [p for path in args.data for p in load_points(path)]
    for (config, shape), by_machine in sorted(repeat_groups(points).items()):
        values = [float(m[args.metric]) for ms in by_machine.values() for m in ms]
        if len(values) < 2:
            continue
        c, w = json.loads(config), json.loads(shape)
        knobs = " ".join(f"{SHORT[k]}={v}" for k, v in c.items() if k in SHORT)
        print(f"{knobs}  ({w['concurrency']} concurrent, {w['input_len']}/{w['output_len']} tokens, "
              f"{w['num_requests']} requests): spread {max(values) / min(values):.2f}x")
        for machine, ms in by_machine.items():
            print(f"    {machine[:40]:40s} " + " ".join(f"{float(m[args.metric]):8.1f}" for m in ms))


if __name__ == "__main__":
    main()
