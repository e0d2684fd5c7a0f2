"""Produce the CPU half of the crash-classifier corpus with real vLLM (the CPU build), reproducibly.

    SLOGUARD_VLLM_PYTHON=.venv-vllm-cpu/bin/python python scripts/collect_crash_logs.py

Each case starts a real server through the project's own launcher (:class:`VllmEngine`) with a config that
must fail, and writes the server's output (without our recorded command line) to
``tests/data/crash_logs/<expected class>/cpu_vllm<version>_<name>.log``. The classifier is NOT consulted
for the label: the expected class is written down here, by cause, before the run.
"""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
import time
from pathlib import Path

from sloguard_lib.engine.base import EngineCrash
from sloguard_lib.engine.vllm import VllmEngine
from sloguard_lib.hardware import get_gpu, resolve_model

CORPUS = Path(__file__).resolve().parent.parent / "tests" / "data" / "crash_logs"
TINY = {"max_model_len": 512}

#: (expected class, name, model, config, extra vLLM args)
CASES: list[tuple[str, str, str, dict[str, object], list[str]]] = [
    ("oom", "gmu_0.98_above_free_host_memory", "tiny-qwen2", TINY | {"gpu_memory_utilization": 0.98}, []),
    ("kv_insufficient", "gmu_0.05_negative_kv_budget", "tiny-qwen2", TINY | {"gpu_memory_utilization": 0.05}, []),
    ("invalid_config", "max_model_len_above_max_position", "tiny-qwen2", {"max_model_len": 4096}, []),
    ("invalid_config", "chunked_off_batched_tokens_below_max_model_len", "tiny-qwen2",
     {"max_model_len": 1024, "enable_chunked_prefill": False, "max_num_batched_tokens": 256}, []),
    ("invalid_config", "batched_tokens_below_max_num_seqs", "tiny-qwen2",
     TINY | {"max_num_seqs": 64, "max_num_batched_tokens": 32}, []),
    ("invalid_config", "unknown_quantization", "tiny-qwen2", TINY | {"quantization": "int3"}, []),
    ("invalid_config", "dtype_invalid_choice", "tiny-qwen2", TINY, ["--dtype", "float7"]),
    ("invalid_config", "max_num_seqs_zero", "tiny-qwen2", TINY | {"max_num_seqs": 0}, []),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", default=None)
    args = ap.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="crashlogs_"))
    for expected, name, model, config, extra in CASES:
        if args.only and name not in args.only:
            continue
        eng = VllmEngine(resolve_model(model), get_gpu("cpu"), log_dir=logs / name, startup_timeout_s=600,
                         extra_args=extra)
        try:
            server = eng.launch(config | {"gpu_memory_utilization": config.get("gpu_memory_utilization", 0.2)},
                                trial_seed=0)
        except EngineCrash as crash:
            save(expected, name, next((logs / name).glob("*.log")), crash.crash_class)
            continue
        server.close()
        print(f"{name}: started (no crash): not added")
    killed(logs)


def killed(logs: Path) -> None:
    """A healthy server killed with SIGKILL (the OOM killer's signal): only the exit status can tell."""
    eng = VllmEngine(resolve_model("tiny-qwen2"), get_gpu("cpu"), log_dir=logs / "killed", startup_timeout_s=600)
    server = eng.launch(TINY | {"gpu_memory_utilization": 0.2}, trial_seed=0)
    os.killpg(server.proc.pid, signal.SIGKILL)
    server.proc.wait()
    time.sleep(1)
    save("killed", "sigkill_while_idle", server.log_path, f"rc={server.proc.returncode}")
    server.close()


def save(expected: str, name: str, log: Path, got: str) -> None:
    text = log.read_text(errors="replace").partition("\n")[2]  # drop our own "$ command" line
    version = os.environ.get("SLOGUARD_CORPUS_VLLM", "0.32")
    dest = CORPUS / expected / f"cpu_vllm{version}_{name}.log"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(text)
    print(f"{name}: expected {expected}, classifier said {got} -> {dest.relative_to(CORPUS.parent.parent.parent)}")


if __name__ == "__main__":
    main()
