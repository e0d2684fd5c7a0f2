"""A real batch's trials against the simulator's committed forecast of the same batch, config for config.

    python scripts/forecast_check.py [--real results/h100/multiseed] [--forecast results/multiseed_h100_sim]

Issue #17 commits the sim's forecast before the real run, so that the real run tests a prediction. ``random``
proposes the same configs whatever the engine answers, and a model-based optimizer does so until the answers it
got first differ; so for each (optimizer, seed) pair present in both folders, trial ``i`` of the real log is set
beside trial ``i`` of the forecast and marked ``same`` while the configs are identical. Prints the markdown table of
``results/h100/multiseed/README.md`` (goodput within the SLO, else which SLO was missed; TTFT p99, ITL p99 and
throughput as sim / real; the real trial's wall seconds), then how often the verdicts (within the SLO or not)
agree, on the shared configs and on the others.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sloguard_lib.study.trial_log import read_log


def verdict(trial: dict[str, Any]) -> str:
    if trial["status"] == "ok":
        return f"{trial['utility']:,.0f}"
    if trial["status"] == "slo_violation":
        names = {"ttft_p99_ms": "TTFT", "itl_p99_ms": "ITL", "e2e_p99_ms": "E2E", "tpot_p99_ms": "TPOT"}
        return f"miss ({', '.join(names.get(v, v) for v in trial['violated'])})"
    return str(trial["status"]) + (f" ({trial['crash_class']})" if trial.get("crash_class") else "")


def pair(sim: dict[str, Any], real: dict[str, Any], key: str, fmt: str) -> str:
    def one(t: dict[str, Any]) -> str:
        m = t.get("metrics") or {}
        return format(m[key], fmt) if key in m else "-"
    return f"{one(sim)} / {one(real)}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--real", type=Path, default=Path("results/h100/multiseed"))
    ap.add_argument("--forecast", type=Path, default=Path("results/multiseed_h100_sim"))
    args = ap.parse_args()
    print("| optimizer, seed | trial | config | sim | real | TTFT p99 ms | ITL p99 ms | throughput tok/s | real s |")
    print("|---|---|---|---|---|---|---|---|---|")
    agree = {"same": [0, 0], "other": [0, 0]}
    logs = sorted(((path, read_log(path)) for path in args.real.glob("*.jsonl")),
                  key=lambda pl: (pl[1].header["seed"], pl[0].name))
    for path, real in logs:
        h = real.header
        forecast_path = args.forecast / path.name.replace(f"_{h['backend']}_", "_sim_")
        if not forecast_path.exists():
            continue
        forecast = {t["trial"]: t for t in read_log(forecast_path).trials}
        same = True
        for t in real.trials:
            f = forecast.get(t["trial"])
            if f is None:
                continue
            same = same and f["config"] == t["config"]
            kind = "same" if same else "other"
            agree[kind][0] += (f["status"] == "ok") == (t["status"] == "ok")
            agree[kind][1] += 1
            print(f"| {h['optimizer']} {h['seed']} | {t['trial']} | {kind} | {verdict(f)} | {verdict(t)} | "
                  f"{pair(f, t, 'ttft_p99_ms', ',.0f')} | {pair(f, t, 'itl_p99_ms', '.1f')} | "
                  f"{pair(f, t, 'throughput_tok_s', ',.0f')} | {t['wall_s']:.0f} |")
    print()
    for kind, (right, n) in agree.items():
        print(f"verdict (within the SLO or not) agrees on {right} of {n} trials with the {kind} config")


if __name__ == "__main__":
    main()
