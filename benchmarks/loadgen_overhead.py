"""How fast the load generator parses streamed tokens, against a local streaming stub server.

    python benchmarks/loadgen_overhead.py [--processes 1 2] [--repeat 3] [--concurrency 64] [--requests 512]
    python benchmarks/loadgen_overhead.py --processes 1 --concurrency 128 --requests 640 --tokens 128 \
        --token-interval-s 0.006

The stub (tests/openai_stub_server.py, its own process) streams every token as its own SSE event and HTTP
chunk, as vLLM does, by default with no delay, so the client is the bottleneck by design. For each HTTP library
(``LoadTarget.http``) and client-process count (``LoadTarget.processes``) prints the median over ``--repeat``
loads of requests/s, tokens/s parsed, the client's CPU time per token (its timing overhead; the shards' start-up
included) and TTFT p50. Target: >= 75,000 tokens/s on 2 cores, 10x what vLLM serves for a 1.5B model at 64
concurrent on one H100. The stub shares those cores, so this is a lower bound. The second line paces the stub
like a busy GPU server (6 ms per token at 128 concurrent), where the client should add nothing to TTFT.

Measured here (2 cores, 2026-12-02): unpaced, aiohttp 375k tokens/s at 2.8 us/token, httpx 77k at 13.2 us; paced
at 128 concurrent, aiohttp TTFT p50 11 ms and 18.7k tokens/s, httpx 1,060 ms and 5.8k tokens/s (its pool's
per-request scan of 128 keep-alive connections: 161 us of client CPU per token).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from sloguard_lib.engine.vllm import free_port
from sloguard_lib.measure.loadgen import LoadTarget, run_load
from sloguard_lib.measure.workload import Workload

STUB = Path(__file__).resolve().parent.parent / "tests" / "openai_stub_server.py"


def _client_cpu() -> float:
    """CPU seconds of this process and its finished children (the client shards; the stub still runs)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def measure(port: int, wl: Workload, processes: int, http: str) -> tuple[float, float, float, float]:
    """(requests/s, tokens/s, client CPU us per token, TTFT p50 ms) of one load."""
    cpu0 = _client_cpu()
    load = run_load(LoadTarget(f"http://127.0.0.1:{port}", "m", vocab_size=1000, processes=processes, http=http), wl)
    cpu = _client_cpu() - cpu0
    ok = [r for r in load.requests if r.ok]
    if len(ok) != len(load.requests):
        raise SystemExit(f"{len(load.requests) - len(ok)} requests failed: {load.requests[0].error}")
    tokens = sum(len(r.itl_s) + 1 for r in ok)
    ttft_ms = 1e3 * statistics.median(r.ttft_s for r in ok)
    return len(ok) / load.duration_s, tokens / load.duration_s, 1e6 * cpu / tokens, ttft_ms


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="client process counts to measure")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--requests", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--http", nargs="+", default=["aiohttp", "httpx"], help="HTTP libraries to measure")
    ap.add_argument("--token-interval-s", default="0", help="the stub's pace: 0 makes the client the bottleneck")
    args = ap.parse_args()
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(STUB), "serve", "m", "--port", str(port), "--token-interval-s",
                             args.token_interval_s])
    try:
        for _ in range(100):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        wl = Workload(concurrency=args.concurrency, num_requests=args.requests, input_len=16,
                      output_len=args.tokens, warmup=2)
        print(f"{args.requests} requests x {args.tokens} tokens at concurrency {args.concurrency}, "
              f"median of {args.repeat} loads")
        for http in args.http:
            for n in args.processes:
                runs = [measure(port, wl, n, http) for _ in range(args.repeat)]
                req_s, tok_s, cpu_us, ttft = (statistics.median(col) for col in zip(*runs, strict=True))
                print(f"{http} x{n} processes: {req_s:,.0f} requests/s, {tok_s:,.0f} tokens/s parsed "
                      f"(target >= 75,000), client CPU {cpu_us:.1f} us/token, TTFT p50 {ttft:.0f} ms "
                      f"[tokens/s of each load: {', '.join(f'{r[1]:,.0f}' for r in runs)}]")
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
