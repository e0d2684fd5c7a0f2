"""What a real trial costs, phase by phase, for each launcher: the seed's study run with ``--launcher plain`` and
``--launcher warm``.

    python benchmarks/real_trial_cost.py --out results/h100/trial_cost --variants plain=4 warm=15 --stop-after-s 540

Each variant is a real ``sloguard tune`` (the seed's setting by default: Qwen2-1.5B with dummy weights, ``tba-tpe``,
seed 42, SLO 500/100 ms, 32 concurrent 512/128 requests, 128 per load) into ``OUT/<variant>/``, with its own
vLLM, Inductor and Triton caches (``--cache-root``), so each starts as cold as a user's first study and neither
warms the other's compile cache. Variants run in the order given, each with ``--resume``: calling the script again
(a later device call) continues where the budget or ``--stop-after-s`` (shared by all variants) stopped it. Then it
prints, per variant, every trial's phases (``engine_info.phases``: our clock at each vLLM log marker, see
``sloguard_lib/engine/phases.py``) and their medians, checks that each trial's phases add up to its wall time, and
writes ``summary.json``. ``--report-only`` skips the runs.

Without a GPU it runs the CPU build of vLLM (``SLOGUARD_VLLM_PYTHON``) on tiny-qwen2 (pass ``--model``,
``--workload`` and SLOs that suit it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sloguard_lib.engine.phases import ORDER
from sloguard_lib.study.trial_log import read_log


def run_variant(name: str, budget: int, args: argparse.Namespace, left_s: float) -> None:
    cache = Path(args.cache_root).expanduser() / name
    env = os.environ | {"VLLM_CACHE_ROOT": str(cache / "vllm"), "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"),
                        "TRITON_CACHE_DIR": str(cache / "triton")}
    cmd = [sys.executable, "-m", "sloguard_lib.cli", "tune", "--backend", "vllm", "--model", args.model,
           "--optimizer", args.optimizer, "--budget", str(budget), "--seed", str(args.seed),
           "--slo-ttft-p99", str(args.slo_ttft_p99), "--slo-itl-p99", str(args.slo_itl_p99),
           "--workload", args.workload, "--launcher", name, "--out", str(Path(args.out) / name), "--resume",
           "--quiet", "--stop-after-s", str(int(left_s)), *args.tune_args]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, env=env, check=False)


def trials(out: Path, name: str) -> list[dict[str, Any]]:
    logs = sorted((out / name).glob("*.jsonl"))
    return read_log(logs[0]).trials if logs else []


def report(out: Path, names: list[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for name in names:
        rows = trials(out, name)
        if not rows:
            continue
        print(f"\n== {name}: {len(rows)} trials")
        cols = [p for p in ORDER if any(p in (r.get("engine_info") or {}).get("phases", {}) for r in rows)]
        print(f"{'trial':>5} {'status':<14} {'wall_s':>7} {'sum':>7} " + " ".join(f"{c[:12]:>12}" for c in cols))
        worst = 0.0
        for r in rows:
            ph = (r.get("engine_info") or {}).get("phases", {})
            total = sum(ph.values())
            worst = max(worst, abs(total - r["wall_s"])) if ph else worst
            print(f"{r['trial']:>5} {r['status']:<14} {r['wall_s']:>7.1f} {total:>7.1f} "
                  + " ".join(f"{ph[c]:>12.1f}" if c in ph else f"{'-':>12}" for c in cols))
        med = {c: statistics.median((r.get("engine_info") or {}).get("phases", {}).get(c, 0.0) for r in rows)
               for c in cols}
        walls = [r["wall_s"] for r in rows]
        print(f"{'med':>5} {'':<14} {statistics.median(walls):>7.1f} {'':>7} "
              + " ".join(f"{med[c]:>12.1f}" for c in cols))
        print(f"median trial wall {statistics.median(walls):.1f} s (min {min(walls):.1f}, max {max(walls):.1f}); "
              f"phases vs wall: worst gap {worst:.2f} s; launchers: "
              f"{sorted({(r.get('engine_info') or {}).get('launcher', '-') for r in rows})}")
        summary[name] = {"trials": len(rows), "median_wall_s": statistics.median(walls), "wall_s": walls,
                         "median_phases_s": med, "worst_phase_sum_gap_s": worst,
                         "statuses": [r["status"] for r in rows]}
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/trial_cost")
    ap.add_argument("--variants", nargs="+", default=["plain=4", "warm=15"], help="launcher=budget, run in order")
    ap.add_argument("--model", default="qwen2-1.5b")
    ap.add_argument("--optimizer", default="tba-tpe")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--slo-ttft-p99", type=float, default=500.0)
    ap.add_argument("--slo-itl-p99", type=float, default=100.0)
    ap.add_argument("--workload", default="concurrency=32,num_requests=128")
    ap.add_argument("--stop-after-s", type=float, default=3600.0, help="for all variants together")
    ap.add_argument("--cache-root", default="~/.cache/sloguard-trial-cost")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("tune_args", nargs="*", help="after --: more `sloguard tune` arguments (e.g. --range ...)")
    args = ap.parse_args()
    out = Path(args.out)
    plan = [(v.split("=")[0], int(v.split("=")[1])) for v in args.variants]
    t0 = time.monotonic()
    for name, budget in plan if not args.report_only else []:
        left = args.stop_after_s - (time.monotonic() - t0)
        if left < 60:
            break
        if len(trials(out, name)) < budget:
            run_variant(name, budget, args, left)
    summary = report(out, [name for name, _ in plan])
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
