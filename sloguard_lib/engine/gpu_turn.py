"""Servers that share a GPU take turns to change its memory: one start-up or teardown at a time.

vLLM sizes its KV cache from whole-device free-memory deltas around its profile run: memory another process
takes meanwhile is charged to it (a smaller cache, or "No available memory for the cache blocks", vllm#55827),
and memory another process frees meanwhile aborts its start (vllm#56830). On the lent H100, two workers of one
study at half the GPU each (results/h100/workers/) lost a trial each way: a config at gmu 0.36 "crashed" with no
memory for the cache while the other worker's server started, and a warm start failed while the other worker's
server tore down (the plain retry of the same config came up). Neither is the config's doing.

So every start-up (process start to ready) and every teardown holds an exclusive ``flock`` on a file named by the
GPUs this process sees (``CUDA_VISIBLE_DEVICES``, which Ray sets per worker): workers on different GPUs never wait
for each other, and two ``sloguard`` runs on one GPU take turns too. A running server's memory is fixed once it is
ready (weights, KV cache and graphs are allocated at start), so serving needs no turn. Re-entrant within a process:
a start-up that fails tears its server down while holding the turn.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

_mutex = threading.RLock()
_held: list[int] = []  # the lock file's descriptor while this process holds the turn, once per nesting level


def lock_path() -> Path:
    devices = os.environ.get("CUDA_VISIBLE_DEVICES", "all").replace(",", "-") or "none"
    return Path(tempfile.gettempdir()) / f"sloguard-gpu-{devices}.lock"


@contextlib.contextmanager
def memory_turn() -> Iterator[None]:
    """Hold this GPU's turn (waiting for another process's start-up or teardown to finish)."""
    with _mutex:
        fd = _held[-1] if _held else os.open(lock_path(), os.O_RDWR | os.O_CREAT, 0o666)
        try:
            if not _held:
                fcntl.flock(fd, fcntl.LOCK_EX)
            _held.append(fd)
            yield
        finally:
            if _held and _held[-1] == fd:
                _held.pop()
            if not _held:
                os.close(fd)  # releases the flock
