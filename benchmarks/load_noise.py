"""How much one load's goodput varies from load to load on one server, by requests per load.

    python benchmarks/load_noise.py --backend sim --model mistral-7b --gpu h100-80gb \\
        --config '{"max_num_seqs": 24, "max_num_batched_tokens": 512, "enable_chunked_prefill": true}' \\
        --workload concurrency=8,input_len=3000,output_len=128 --sizes 32 320 --loads 10 4 --slo-quantile 0.9

A tuner ranks configs by single loads, so configs whose goodputs differ by less than this spread are ranked by
chance (the optimizer benchmark's long-prompt Mistral scenario is the case in point). The server is launched
once and every load gets its own workload seed, so the spread is measurement noise, not start-up variance.
Goodput only varies when requests sit near the SLO: ``--slo-quantile Q`` puts the TTFT and ITL thresholds at
the Q-quantile of the pooled per-request values (a tenth of the requests miss at 0.9), the regime a tuned
config ends up in; explicit ``--slo-ttft-p99/--slo-itl-p99`` override it. Every load's per-request results are
appended to ``--out/loads.jsonl`` as it finishes, so a run cut short keeps what it measured. Same code for
every backend: ``--backend vllm`` on a GPU measures real vLLM.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from sloguard_lib.engine import EngineCrash, make_engine
from sloguard_lib.errors import InputError
from sloguard_lib.hardware import get_gpu, resolve_model
from sloguard_lib.measure.metrics import LoadResult, summarize
from sloguard_lib.measure.slo import SLO
from sloguard_lib.measure.workload import parse_workload


def quantile_slo(loads: list[LoadResult], q: float) -> SLO:
    """Thresholds at the ``q``-quantile of every request's TTFT and own ITL p99, pooled over all loads."""
    ok = [r for load in loads for r in load.requests if r.ok]
    return SLO(float(np.quantile([r.ttft_s * 1000 for r in ok], q)),
               float(np.quantile([r.itl_p99_s * 1000 for r in ok], q)))


def spread(loads: list[LoadResult], slo: SLO) -> dict[str, float]:
    """Goodput mean and relative standard deviation over loads, with the SLO attainment."""
    verdicts = [slo.evaluate(load, summarize(load)) for load in loads]
    goodput = np.array([v.goodput_tok_s for v in verdicts])
    return {"loads": len(loads), "goodput_mean": float(goodput.mean()),
            "goodput_sd_pct": float(100 * goodput.std(ddof=1) / goodput.mean()) if len(loads) > 1 else float("nan"),
            "attainment_mean": float(np.mean([v.attainment for v in verdicts])),
            "throughput_mean": float(np.mean([v.throughput_tok_s for v in verdicts]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="sim")
    ap.add_argument("--model", default="mistral-7b")
    ap.add_argument("--gpu", default="h100-80gb")
    ap.add_argument("--config", default="{}", help="knobs as a JSON object; unset knobs take vLLM's defaults")
    ap.add_argument("--workload", default="concurrency=8,input_len=3000,output_len=128")
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 320], help="requests per load")
    ap.add_argument("--loads", type=int, nargs="+", default=[10, 4], help="loads per size, same order")
    ap.add_argument("--slo-quantile", type=float, default=0.9)
    ap.add_argument("--slo-ttft-p99", type=float)
    ap.add_argument("--slo-itl-p99", type=float)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("results/load_noise"))
    args = ap.parse_args()
    if len(args.sizes) != len(args.loads):
        raise SystemExit("--sizes and --loads need the same number of values")
    if (args.slo_ttft_p99 is None) != (args.slo_itl_p99 is None):
        raise SystemExit("give both --slo-ttft-p99 and --slo-itl-p99, or neither (then --slo-quantile sets them)")
    try:
        config: dict[str, Any] = json.loads(args.config)
        if not isinstance(config, dict):
            raise SystemExit(f"--config {args.config!r} is not a JSON object")
        base = parse_workload(args.workload)
        engine = make_engine(args.backend, resolve_model(args.model), get_gpu(args.gpu))
    except json.JSONDecodeError as e:
        raise SystemExit(f"--config {args.config!r} is not valid JSON: {e.msg}") from None
    except InputError as e:
        raise SystemExit(f"error: {e}") from None
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        server = engine.launch(config, trial_seed=args.seed)
    except EngineCrash as crash:
        raise SystemExit(f"the server did not start: [{crash.crash_class}] {crash.message}") from None
    by_size: dict[int, list[LoadResult]] = {}
    try:
        with (args.out / "loads.jsonl").open("a") as log:
            for size, n in zip(args.sizes, args.loads, strict=True):
                for i in range(n):
                    load = server.run_load(dataclasses.replace(base, num_requests=size, seed=1000 * size + i))
                    by_size.setdefault(size, []).append(load)
                    log.write(json.dumps({"backend": args.backend, "model": args.model, "gpu": args.gpu,
                                          "config": config, "requests_per_load": size, "load": i,
                                          "duration_s": load.duration_s,
                                          "requests": [dataclasses.asdict(r) for r in load.requests]}) + "\n")
                    log.flush()
                    print(f"{size} requests, load {i + 1}/{n}: {load.duration_s:.1f} s", flush=True)
    finally:
        server.close()
    explicit = args.slo_ttft_p99 is not None
    slo = SLO(args.slo_ttft_p99, args.slo_itl_p99) if explicit else quantile_slo(
        [load for loads in by_size.values() for load in loads], args.slo_quantile)
    print(f"\n{args.backend} {args.model} on {args.gpu}, {json.dumps(config)}; server start "
          f"{server.info.start_s:.0f} s, {time.perf_counter() - t0:.0f} s in all")
    print(f"SLO TTFT p99 {slo.ttft_p99_ms:.1f} ms, ITL p99 {slo.itl_p99_ms:.2f} ms"
          + ("" if explicit else f" (the {args.slo_quantile:g}-quantile of the pooled per-request values)"))
    print("| requests per load | loads | goodput tok/s | s.d. % | attainment | throughput tok/s |\n"
          "|---|---|---|---|---|---|")
    rows = []
    for size, loads in by_size.items():
        s = spread(loads, slo) | {"requests_per_load": size}
        rows.append(s)
        print(f"| {size} | {s['loads']} | {s['goodput_mean']:,.0f} | {s['goodput_sd_pct']:.1f} | "
              f"{s['attainment_mean']:.3f} | {s['throughput_mean']:,.0f} |")
    (args.out / "summary.json").write_text(json.dumps({"slo": slo.to_dict(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
