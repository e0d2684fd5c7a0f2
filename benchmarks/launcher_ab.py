"""Does the warm launcher serve exactly as a plain ``vllm serve``? Two servers of one config, interleaved loads.

    python benchmarks/launcher_ab.py --loads 6 --concurrency 32 --out results/h100/launcher_ab \\
        --config '{"max_num_seqs": 128, "max_num_batched_tokens": 2048, "enable_chunked_prefill": true, \\
                   "gpu_memory_utilization": 0.4}'

One server started by ``--launcher plain`` and one by ``--launcher warm`` (a spare interpreter, engine core forked
from it), both alive on the same GPU (so the config's ``gpu_memory_utilization`` must leave room for two), loaded
one at a time: ``--loads`` rounds, each running both servers once in an order that alternates between rounds, each
load on its own prompt seed. Per metric it prints both means and the mean per-round difference warm vs plain in %
with a paired 95 % interval (``sloguard_lib.analysis.stats.paired_diff_pct``), and writes ``loads.jsonl`` and
``summary.json``. The verdict: every interval contains 0, or is within the load-to-load noise of a single server.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from sloguard_lib.analysis.stats import paired_diff_pct
from sloguard_lib.engine import make_engine, placement
from sloguard_lib.hardware import get_gpu, resolve_model
from sloguard_lib.measure.metrics import summarize
from sloguard_lib.measure.workload import Workload

METRICS = ("throughput_tok_s", "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms", "tpot_p50_ms")
LAUNCHERS = ("plain", "warm")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2-1.5b")
    ap.add_argument("--config", default='{"gpu_memory_utilization": 0.4}', help="both servers' knobs as JSON")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--requests-per-concurrent", type=int, default=5)
    ap.add_argument("--input-len", type=int, default=512)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--loads", type=int, default=6, help="loads per server")
    ap.add_argument("--out", default="results/launcher_ab")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = json.loads(args.config)
    backend, gpu = placement("vllm", None)
    servers: dict[str, Any] = {}
    engines = {name: make_engine(backend, resolve_model(args.model), get_gpu(gpu),
                                 {"log_dir": out / "server_logs", "launcher": name}) for name in LAUNCHERS}
    rows: list[dict[str, Any]] = []
    try:
        for name in LAUNCHERS:
            servers[name] = engines[name].launch(config, trial_seed=0, label=f"launcher_{name}")
            print(f"{name}: ready in {servers[name].info.start_s:.1f} s, launcher "
                  f"{servers[name].info.extra['launcher']}, KV {servers[name].info.kv_cache_tokens} tokens", flush=True)
        n = args.concurrency * args.requests_per_concurrent
        for rnd in range(args.loads):
            for name in LAUNCHERS if rnd % 2 == 0 else LAUNCHERS[::-1]:
                seed = 100 * rnd + LAUNCHERS.index(name)
                wl = Workload(concurrency=args.concurrency, num_requests=n, input_len=args.input_len,
                              output_len=args.output_len, seed=seed)
                t0 = time.perf_counter()
                m = summarize(servers[name].run_load(wl))
                row = {"launcher": name, "round": rnd, "seed": seed, "wall_s": time.perf_counter() - t0,
                       **{k: m[k] for k in METRICS}, "requests_failed": m["requests_failed"]}
                rows.append(row)
                with open(out / "loads.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
    finally:
        for server in servers.values():
            server.close()
        for engine in engines.values():
            engine.close()  # type: ignore[attr-defined]
    summary: dict[str, Any] = {"config": config, "model": args.model, "gpu": gpu, "loads": args.loads,
                               "concurrency": args.concurrency,
                               "start_s": {k: s.info.start_s for k, s in servers.items()}, "table": []}
    print(f"\n{'metric':<17} {'plain':>12} {'warm':>12}   warm vs plain (paired 95 % CI)")
    for metric in METRICS:
        vals = {name: [r[metric] for r in rows if r["launcher"] == name] for name in LAUNCHERS}
        d, lo, hi = paired_diff_pct(vals["warm"], vals["plain"])
        summary["table"].append({"metric": metric, "plain": float(np.mean(vals["plain"])),
                                 "warm": float(np.mean(vals["warm"])), "warm_vs_plain_pct": [d, lo, hi]})
        print(f"{metric:<17} {np.mean(vals['plain']):>12,.2f} {np.mean(vals['warm']):>12,.2f}   "
              f"{d:+.1f} % [{lo:+.1f}, {hi:+.1f}]")
    (out / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
