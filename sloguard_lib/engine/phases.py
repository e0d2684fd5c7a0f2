"""Where a real trial's wall time goes, from our own clock and the server's log as it is written.

vLLM's log timestamps have one-second resolution and say nothing about the time before its first line, so the
launcher stamps each marker line with ``time.perf_counter()`` when it first appears in the log (the log is read
at every readiness poll, every 0.1 s, and the server runs with ``PYTHONUNBUFFERED=1``). A phase is the span
from the previous stamp to its own marker, so the phases of a trial add up to its wall time by construction; a
marker that never appears (``--enforce-eager`` has no compile, the CPU build no graph capture, other vLLM
versions word things differently) folds its span into the next phase instead of losing it.

Measured on the H100 (vLLM 0.26.0, plain ``vllm serve``, results/h100/README.md): imports ~24 s, engine-core
start ~26 s, weights 2 s, torch.compile 6 s (cache hit) or 21-25 s (miss), graph capture 5-6 s, a further
15-17 s of kernel warm-up before the engine reports ready.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

#: (phase, the log line that ends it), in the order vLLM 0.26-0.32 writes them.
MARKERS: tuple[tuple[str, re.Pattern[str]], ...] = tuple((name, re.compile(pattern)) for name, pattern in (
    ("import", r"non-default args:"),  # the API server process has imported vLLM and parsed its flags
    ("engine_core_start", r"Initializing a V1 LLM engine"),  # the engine-core process is up and imported
    ("weights", r"Model loading took|Initializing model took"),
    ("compile", r"torch\.compile took|saved AOT compiled function"),
    ("kv_cache", r"KV cache size:"),
    ("graph_capture", r"Graph capturing finished"),
    ("warmup", r"init engine \(profile, create kv cache, warmup model\) took"),
))
#: the phases after the log markers, stamped by the launcher and the trial itself.
READY, LOAD, TEARDOWN = "api_start", "load", "teardown"
ORDER = ("gpu_wait", "spare_wait", *(name for name, _ in MARKERS), READY, LOAD, TEARDOWN)


class PhaseClock:
    """Stamps marker lines as they appear in a growing log file; ``phases()`` turns stamps into spans."""

    def __init__(self, log_path: Path, t0: float, offset: int = 0) -> None:
        self.log_path, self.t0 = log_path, t0
        self._pos = offset  # bytes of the log already read (our own command line is not the server's)
        self._partial = ""
        self._next = 0  # index into MARKERS: markers are matched in order, each once
        self.stamps: list[tuple[str, float]] = []

    def stamp(self, phase: str, at: float | None = None) -> None:
        self.stamps.append((phase, time.perf_counter() if at is None else at))

    def poll(self) -> None:
        """Read what the server has written since the last call and stamp the markers in it."""
        now = time.perf_counter()
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._pos)
                chunk = f.read()
        except OSError:
            return
        self._pos += len(chunk)
        lines = (self._partial + chunk.decode(errors="replace")).split("\n")
        self._partial = lines.pop()
        for line in lines:
            for i in range(self._next, len(MARKERS)):
                if MARKERS[i][1].search(line):
                    self.stamp(MARKERS[i][0], now)
                    self._next = i + 1
                    break

    def phases(self) -> dict[str, float]:
        """Seconds per phase, from ``t0`` to the last stamp, in the order they happened."""
        out: dict[str, float] = {}
        last = self.t0
        for phase, at in self.stamps:
            out[phase] = round(out.get(phase, 0.0) + at - last, 3)
            last = at
        return out
