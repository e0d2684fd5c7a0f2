"""Attribute a failed vLLM server to a crash class, from its log, exit status and HTTP behaviour.

Rules are ordered: the first matching pattern wins, and the most specific causes come first (a KV-cache
error is also reported as "Engine core initialization failed", so it must be tested before the generic
ones). The returned excerpt is the matching log line with a little context, which the trial log keeps.
"""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass

_RULES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (cls, re.compile(p, re.IGNORECASE)) for cls, p in (
        ("kv_insufficient", r"No available memory for the cache blocks"),
        ("kv_insufficient", r"KV cache is needed, which is larger than the available KV cache memory"),
        ("kv_insufficient", r"is larger than the maximum number of tokens that can be stored in KV cache"),
        ("kv_insufficient", r"is less than requested memory for kv"),  # CPU build: budget below non-KV use
        ("oom", r"CUDA out of memory|torch\.OutOfMemoryError|OutOfMemoryError|CUBLAS_STATUS_ALLOC_FAILED"),
        ("oom", r"Free memory on device .* is less than desired GPU memory utilization"),
        ("oom", r"Available memory on node .* is less than desired CPU memory utilization"),
        ("cuda_error", r"illegal memory access|device-side assert|CUBLAS_STATUS_|NCCL error|cudaError|CUDA error"),
        ("invalid_config", r"ValidationError|Value error,|error: argument|unrecognized arguments|invalid choice"),
        ("invalid_config", r"is not supported for the current GPU|Unknown quantization method|not supported"),
    )
)


@dataclass(frozen=True)
class Classification:
    crash_class: str
    line: str  # the log line that decided it (the crash message)
    excerpt: str  # that line with context, for the trial record


def classify_log(text: str, *, returncode: int | None = None, context: int = 2) -> Classification:
    """Classify from log text; fall back to the exit signal, else ``unknown``."""
    lines = text.splitlines()
    for cls, pattern in _RULES:
        for i, line in enumerate(lines):
            if pattern.search(line):
                excerpt = "\n".join(lines[max(0, i - context): i + context + 1])
                return Classification(cls, line.strip(), excerpt)
    if returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "unknown signal"
        msg = f"terminated by signal {-returncode} ({name})"
        return Classification("killed", msg, msg)
    last = next((ln.strip() for ln in reversed(lines) if ln.strip()), "no output")
    return Classification("unknown", last, "\n".join(lines[-8:]))
