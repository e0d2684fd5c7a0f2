"""How fast the load generator parses streamed tokens, against a local streaming stub server.

    python benchmarks/loadgen_overhead.py [--concurrency 64] [--requests 256] [--tokens 256]

The stub (tests/openai_stub_server.py, its own process) streams every token as its own SSE event with no
delay, so the client is the bottleneck by design. Prints requests/s, tokens/s parsed, and the client's
CPU time per token (its timing overhead). Target: >= 75,000 tokens/s, 10x what vLLM serves for a 1.5B
model at 64 concurrent on one H100. The stub shares the machine's cores, so this is a lower bound.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import httpx

from sloguard_lib.engine.vllm import free_port
from sloguard_lib.loadgen import LoadTarget, run_load
from sloguard_lib.workload import Workload

STUB = Path(__file__).resolve().parent.parent / "tests" / "openai_stub_server.py"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=256)
    args = ap.parse_args()
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(STUB), "serve", "m", "--port", str(port), "--token-interval-s", "0"])
    try:
        for _ in range(100):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        wl = Workload(concurrency=args.concurrency, num_requests=args.requests, input_len=16,
                      output_len=args.tokens, warmup=2)
        cpu0, t0 = time.process_time(), time.perf_counter()
        load = run_load(LoadTarget(f"http://127.0.0.1:{port}", "m", vocab_size=1000), wl)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait()
    tokens = sum(len(r.itl_s) + 1 for r in load.requests if r.ok)
    ok = sum(r.ok for r in load.requests)
    print(f"{ok}/{len(load.requests)} requests ok, {tokens:,} streamed events in {load.duration_s:.2f} s")
    print(f"requests/s: {ok / load.duration_s:,.0f}")
    print(f"tokens/s parsed: {tokens / load.duration_s:,.0f}   (target >= 75,000)")
    print(f"client CPU per token: {1e6 * cpu / tokens:.1f} us (wall incl. warm-up {wall:.2f} s)")


if __name__ == "__main__":
    main()
