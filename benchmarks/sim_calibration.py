"""Simulator vs the real H100 figures it is calibrated to (vLLM 0.26.0, dummy Qwen2-1.5B).

    python benchmarks/sim_calibration.py

Each row runs ``sloguard bench``'s evaluation with 512-token prompts, 128 output tokens, gmu 0.5,
max_model_len 2048 and 4 x concurrency requests (closed loop), then prints sim, real and relative error.
"""

from __future__ import annotations

from sloguard_lib.engine.calibration import H100_KV_TOKENS, H100_REFERENCE
from sloguard_lib.engine.sim import SimEngine
from sloguard_lib.hardware import get_gpu, resolve_model
from sloguard_lib.metrics import summarize
from sloguard_lib.workload import Workload

CONFIG = {"gpu_memory_utilization": 0.5, "max_model_len": 2048}


def main() -> None:
    engine = SimEngine(resolve_model("qwen2-1.5b"), get_gpu("h100-80gb"))
    server = engine.launch(CONFIG, trial_seed=1)
    kv = server.info.kv_cache_tokens or 0
    print(f"KV cache tokens: sim {kv:,} real {H100_KV_TOKENS:,} ({kv / H100_KV_TOKENS - 1:+.2%})")
    print(f"{'conc':>4s} {'metric':18s} {'sim':>9s} {'real':>9s} {'error':>8s}  within 25%")
    worst = 0.0
    for ref in H100_REFERENCE:
        c = int(ref["concurrency"] or 1)
        wl = Workload(concurrency=c, num_requests=max(16, 4 * c), input_len=512, output_len=128)
        m = summarize(engine.launch(CONFIG, trial_seed=1).run_load(wl))
        for key, real in ref.items():
            if key == "concurrency" or real is None:
                continue
            err = m[key] / float(real) - 1
            worst = max(worst, abs(err))
            ok = "yes" if abs(err) <= 0.25 else "NO"
            print(f"{c:4d} {key:18s} {m[key]:9.1f} {float(real):9.1f} {err:+8.1%}  {ok}")
    print(f"worst relative error: {worst:.1%}")


if __name__ == "__main__":
    main()
