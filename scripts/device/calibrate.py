"""Measure real vLLM on the GPU box: a grid of (config x load) points, plus deliberate start-up crashes.

Run there after ``install.sh``::

    PYTHONPATH=/tmp/site:. python3 scripts/device/calibrate.py --out $OUT --budget-s 500

Each config starts ONE server and runs every load of that config against it, so start-up time is paid
once per config. One JSON record per (config, load) is appended (and flushed) to ``calibration.jsonl``
as it is measured, so a run cut short keeps everything measured so far. Server logs are packed into
``server_logs.tar.gz``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any

from sloguard_lib.engine.base import EngineCrash
from sloguard_lib.engine.vllm import VllmEngine
from sloguard_lib.hardware import get_gpu, resolve_model
from sloguard_lib.metrics import summarize
from sloguard_lib.workload import Workload

_loads = iter(range(1, 10_000))


def wl(c: int, n: int, i: int = 512, o: int = 128, **kw: Any) -> Workload:
    """A load with its own prompt seed: a server must never see a prompt twice (prefix caching would hit)."""
    return Workload(concurrency=c, num_requests=n, input_len=i, output_len=o, seed=next(_loads), **kw)


REF = {"gpu_memory_utilization": 0.5, "max_model_len": 2048}
GRID: list[tuple[str, dict[str, Any], list[Workload]]] = [
    ("invalid_combination",
     {"max_num_batched_tokens": 512, "max_model_len": 4096, "enable_chunked_prefill": False}, []),
    ("reference", REF, [wl(1, 16), wl(16, 64), wl(16, 16), wl(64, 256), wl(64, 64), wl(128, 256)]),
    ("eager", REF | {"enforce_eager": True}, [wl(1, 8), wl(16, 64), wl(64, 256)]),
    ("no_chunked", REF | {"enable_chunked_prefill": False, "max_num_batched_tokens": 2048},
     [wl(64, 256), wl(16, 64, i=1536, o=64)]),
    ("small_batch", REF | {"max_num_seqs": 16, "max_num_batched_tokens": 1024},
     [wl(64, 128), wl(8, 32, i=1024, o=256)]),
    # grid 3: every load on a fresh prompt seed, spanning the knob and load ranges of issue #6
    ("wide", {"gpu_memory_utilization": 0.6, "max_model_len": 4096, "max_num_seqs": 256,
              "max_num_batched_tokens": 8192},
     [wl(1, 16, i=128, o=32), wl(16, 64), wl(32, 64, i=2048, o=128), wl(128, 256, i=128, o=512)]),
    ("eager_tiny_batch", REF | {"enforce_eager": True, "max_num_seqs": 4, "max_num_batched_tokens": 512},
     [wl(1, 8, i=256, o=64), wl(16, 48, i=256, o=64)]),
    ("prefix_cache_on", REF | {"enable_prefix_caching": True}, [wl(32, 128, shared_prefix=0.75)]),
    ("prefix_cache_off", REF | {"enable_prefix_caching": False},
     [wl(32, 128, shared_prefix=0.75), wl(64, 256), wl(128, 256, i=256, o=256)]),
    ("no_chunked_big", REF | {"enable_chunked_prefill": False, "max_num_seqs": 128,
                              "max_num_batched_tokens": 8192},
     [wl(64, 256, i=1024, o=128), wl(8, 32, i=128, o=512)]),
    ("gmu_too_low", {"gpu_memory_utilization": 0.03}, []),
    ("kv_below_max_model_len", {"gpu_memory_utilization": 0.05, "max_model_len": 65536}, []),
]


def gpu_name() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
    except OSError:
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--budget-s", type=float, default=500.0, help="stop starting servers after this many seconds")
    ap.add_argument("--only", nargs="*", default=None, help="names of grid rows to run")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logs = Path("/tmp/sloguard_server_logs")  # $OUT returns few files: logs travel as one tarball
    engine = VllmEngine(resolve_model("qwen2-1.5b"), get_gpu("h100-80gb"), log_dir=logs, startup_timeout_s=300)
    t_begin = time.perf_counter()
    name_gpu = gpu_name()
    with open(out / "calibration.jsonl", "a") as f:
        def emit(rec: dict[str, Any]) -> None:
            rec |= {"gpu": name_gpu, "model": "qwen2-1.5b (dummy weights)"}
            f.write(json.dumps(rec, default=str) + "\n")
            f.flush()
            print(json.dumps({k: rec[k] for k in ("name", "status") if k in rec} |
                             {k: round(v, 2) for k, v in rec.get("metrics", {}).items()
                              if k in ("ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms", "throughput_tok_s")}
                             | {"conc": rec.get("workload", {}).get("concurrency")}), flush=True)

        for name, config, loads in GRID:
            if args.only and name not in args.only:
                continue
            if time.perf_counter() - t_begin > args.budget_s:
                print(f"budget spent; skipping {name}", flush=True)
                continue
            try:
                server = engine.launch(config, trial_seed=0)
            except EngineCrash as c:
                emit({"name": name, "config": config, "status": "crash", "crash_class": c.crash_class,
                      "crash_message": c.message, "log_excerpt": c.log_excerpt, "elapsed_s": c.elapsed_s,
                      "engine_version": engine.describe()["engine_version"]})
                continue
            try:
                for wl in loads:
                    try:
                        load = server.run_load(wl)
                    except EngineCrash as c:
                        emit({"name": name, "config": config, "workload": wl.to_dict(), "status": "crash",
                              "crash_class": c.crash_class, "crash_message": c.message})
                        break
                    emit({"name": name, "config": config, "workload": wl.to_dict(), "status": "ok",
                          "metrics": summarize(load), "kv_cache_tokens": server.info.kv_cache_tokens,
                          "start_s": server.info.start_s, "engine_version": server.info.engine_version})
            finally:
                server.close()
    with tarfile.open(out / "server_logs.tar.gz", "w:gz") as tar:
        tar.add(logs, arcname="server_logs")
    print(f"done in {time.perf_counter() - t_begin:.0f} s", flush=True)


if __name__ == "__main__":
    main()
