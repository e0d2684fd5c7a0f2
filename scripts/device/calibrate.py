"""Measure real vLLM on the GPU box: a grid of (config x load) points, plus deliberate start-up crashes.

Run there after ``install.sh``::

    PYTHONPATH=/tmp/site:. python3 scripts/device/calibrate.py --out $OUT --budget-s 500

Each config starts ONE server and runs every load of that config against it, so start-up time is paid
once per config. ``--grid fidelity`` is the held-out-error grid of issue #16 (:func:`fidelity_grid`: 43 configs,
every (config, workload) on three loads of their own prompt seeds); ``--resume`` skips the configs that
``calibration.jsonl`` in ``--out`` already holds, so the grid spreads over device calls. One JSON record per
(config, load) is appended (and flushed) to ``calibration.jsonl`` as it is measured, so a run cut short keeps
everything measured so far. Server logs are packed into ``server_logs.tar.gz``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sloguard_lib.engine.base import EngineCrash
from sloguard_lib.engine.sim import SimEngine
from sloguard_lib.engine.vllm import VllmEngine
from sloguard_lib.hardware import GIB, detect_gpu_name, detect_gpu_uuid, get_gpu, resolve_model
from sloguard_lib.measure.metrics import summarize
from sloguard_lib.measure.workload import Workload
from sloguard_lib.study.runner import default_space

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


def fidelity_grid(gpu: str) -> list[tuple[str, dict[str, Any], list[Workload]]]:
    """Issue #16's coverage on the ``gpu`` profile, three loads (each on its own prompt seed) per (config, workload):
    chunked-prefill budgets 256-8192 at two concurrencies, prefix-cache shares 0-90 %, eager against graphs,
    queueing (``max_num_seqs`` below the concurrency), 2-4k prompts, 128-256 concurrent, KV pressure with
    preemption, start-up crashes, and ten random configs of that GPU's default space for the knobs' interactions.
    The KV-pressure and crash rows size ``gpu_memory_utilization`` by the GPU's memory (the lent GPU changes
    between sessions: the H200's 3.5 % is 4.9 GB, on the H100 it is less than the 3 GB of weights)."""
    def three(c: int, n: int, **kw: Any) -> list[Workload]:
        return [wl(c, n, **kw) for _ in range(3)]

    base = {"gpu_memory_utilization": 0.8, "max_model_len": 4096, "max_num_seqs": 256}
    grid: list[tuple[str, dict[str, Any], list[Workload]]] = []
    for mbt in (256, 512, 1024, 2048, 4096, 8192):
        grid.append((f"chunk_{mbt}", base | {"enable_chunked_prefill": True, "max_num_batched_tokens": mbt},
                     three(16, 64) + three(64, 192)))
    for mbt, eager in ((2048, False), (8192, False), (2048, True)):
        grid.append((f"prefix_{mbt}{'_eager' if eager else ''}",
                     base | {"enable_prefix_caching": True, "max_num_batched_tokens": mbt, "enforce_eager": eager},
                     three(32, 96, shared_prefix=0.3) + three(32, 96, shared_prefix=0.6)
                     + three(32, 96, shared_prefix=0.9)))
    for eager in (False, True):
        tag = "eager" if eager else "graphs"
        grid += [(f"{tag}_chunk_1024", base | {"enforce_eager": eager, "max_num_batched_tokens": 1024},
                  three(8, 32) + three(64, 192)),
                 (f"{tag}_chunk_4096", base | {"enforce_eager": eager, "max_num_batched_tokens": 4096},
                  three(8, 32) + three(64, 192)),
                 (f"{tag}_nochunk_8192", base | {"enforce_eager": eager, "enable_chunked_prefill": False,
                                                 "max_num_batched_tokens": 8192}, three(8, 32) + three(64, 192))]
    for mns in (4, 8, 16, 32):
        grid.append((f"queue_{mns}", base | {"max_num_seqs": mns, "max_num_batched_tokens": 2048},
                     three(64, 128)))
    for mbt in (2048, 8192):
        long_ctx = base | {"max_model_len": 8192, "max_num_batched_tokens": mbt}
        grid += [(f"long_{mbt}", long_ctx, three(8, 24, i=2048) + three(8, 24, i=4000)),
                 (f"long_{mbt}_c32", long_ctx | {"enable_prefix_caching": False}, three(32, 64, i=3000))]
    for mbt in (2048, 8192):
        grid += [(f"high_conc_{mbt}", base | {"max_num_batched_tokens": mbt}, three(128, 384) + three(256, 512)),
                 (f"high_conc_{mbt}_short", base | {"max_num_batched_tokens": mbt, "enable_prefix_caching": False},
                  three(256, 512, i=128, o=256))]
    profile, model = get_gpu(gpu), resolve_model("qwen2-1.5b")
    sim = SimEngine(model, profile)

    def gmu_for_kv(tokens: int, config: dict[str, Any]) -> float:
        """The memory share that leaves the sim's memory plan (fitted to vLLM's own report, within 1 %) KV for
        ``tokens``: what is not KV does not grow with the share."""
        fixed = -sim.memory_plan(config | {"gpu_memory_utilization": 0.0}).kv
        return round((fixed + tokens * model.kv_bytes_per_token()) / (profile.vram_gib * GIB), 4)

    kv_base = {"max_model_len": 2048, "max_num_seqs": 256}
    for tokens in (20_000, 30_000, 45_000):  # 128 requests of up to 768 tokens want 98k: preemption
        gmu = gmu_for_kv(tokens, kv_base)
        grid.append((f"kv_pressure_{tokens // 1000}k", kv_base | {"gpu_memory_utilization": gmu},
                     three(128, 256, o=256)))
    grid += [("crash_gmu_too_low", {"gpu_memory_utilization": round(0.5 * gmu_for_kv(0, {}), 4)}, []),
             ("crash_kv_below_max_model_len", {"gpu_memory_utilization": gmu_for_kv(10_000, {}),
                                               "max_model_len": 65536}, []),
             ("crash_invalid_combination", {"max_num_batched_tokens": 512, "max_model_len": 4096,
                                            "enable_chunked_prefill": False}, [])]
    space = default_space("qwen2-1.5b", gpu, Workload(concurrency=32, input_len=512, output_len=128))
    rng = np.random.default_rng(16)
    for k in range(10):
        grid.append((f"random_{k}", space.finalize(space.sample(rng)), three(32, 96)))
    return grid


def done_configs(path: Path, grid: list[tuple[str, dict[str, Any], list[Workload]]]) -> set[str]:
    """Names of the grid rows ``path`` holds a record of (a crash, or every load the row asks for)."""
    if not path.exists():
        return set()
    counts: dict[str, int] = {}
    crashed = set()
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        counts[rec["name"]] = counts.get(rec["name"], 0) + 1
        if rec["status"] == "crash":
            crashed.add(rec["name"])
    return crashed | {name for name, _, loads in grid if loads and counts.get(name, 0) >= len(loads)}


GRIDS: dict[str, Callable[[str], list[tuple[str, dict[str, Any], list[Workload]]]]] = {
    "h100": lambda gpu: GRID, "fidelity": fidelity_grid}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--budget-s", type=float, default=500.0, help="stop starting servers after this many seconds")
    ap.add_argument("--only", nargs="*", default=None, help="names of grid rows to run")
    ap.add_argument("--grid", choices=list(GRIDS), default="h100")
    ap.add_argument("--gpu", default="h100-80gb", help="the profile that names the records")
    ap.add_argument("--resume", action="store_true", help="skip the rows calibration.jsonl in --out holds")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logs = Path("/tmp/sloguard_server_logs")  # $OUT returns few files: logs travel as one tarball
    engine = VllmEngine(resolve_model("qwen2-1.5b"), get_gpu(args.gpu), log_dir=logs, startup_timeout_s=300)
    grid = GRIDS[args.grid](args.gpu)
    skip = done_configs(out / "calibration.jsonl", grid) if args.resume else set()
    t_begin = time.perf_counter()
    name_gpu = detect_gpu_name() or "unknown"
    with open(out / "calibration.jsonl", "a") as f:
        def emit(rec: dict[str, Any]) -> None:
            rec |= {"gpu": name_gpu, "gpu_uuid": detect_gpu_uuid(), "model": "qwen2-1.5b (dummy weights)",
                    "measured": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
            f.write(json.dumps(rec, default=str) + "\n")
            f.flush()
            print(json.dumps({k: rec[k] for k in ("name", "status") if k in rec} |
                             {k: round(v, 2) for k, v in rec.get("metrics", {}).items()
                              if k in ("ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms", "throughput_tok_s")}
                             | {"conc": rec.get("workload", {}).get("concurrency")}), flush=True)

        for name, config, loads in grid:
            if (args.only and name not in args.only) or name in skip:
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
