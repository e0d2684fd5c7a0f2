"""Stopping a study from outside: SIGINT, SIGTERM and SIGHUP unwind the stack like Ctrl-C does.

Python turns only SIGINT into an exception (``KeyboardInterrupt``); SIGTERM (``kill``, a batch scheduler, a
Colab runtime being recycled) and SIGHUP (a closed terminal or SSH session) end the process at once, so no
``finally`` runs and a ``vllm serve`` we started lives on, holding the GPU and its port (seen on the CPU vLLM:
13.8 GB RSS re-parented to PID 1). :func:`interrupts_raise` makes all three raise :class:`Interrupted`, so the
one cleanup path (``finally: server.close()``) runs for every way of stopping us but SIGKILL, which the next
run handles (:mod:`sloguard_lib.engine.reaper`).

:func:`deferred_interrupts` holds those signals back while a server is being torn down: a second Ctrl-C in
the middle of ``close()`` would otherwise abandon half the process tree; the signal is delivered, and raises,
as soon as the teardown is over.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """A stop request from a signal. A ``KeyboardInterrupt`` so that code (and notebooks) that already treat
    Ctrl-C as "stop now, clean up" treat SIGTERM and SIGHUP the same way."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number (130, 143, 129)."""
        return 128 + self.signum


def _raise(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def interrupts_raise() -> Iterator[None]:
    """Within the block, SIGINT, SIGTERM and SIGHUP raise :class:`Interrupted` (main thread only: elsewhere
    Python cannot install handlers, and the block changes nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise) for s in SIGNALS}
    try:
        yield
    finally:
        _restore(previous)


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold the stop signals back for the duration of the block; one that arrived meanwhile is re-raised after
    it, to whatever handler was in place (ours, Jupyter's KeyboardInterrupt, or the default). Done with
    handlers rather than ``pthread_sigmask``: a blocked signal is delivered to any other thread (rich's
    progress refresher, tqdm's monitor) and its Python handler still runs in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {s: signal.signal(s, lambda signum, _frame: pending.append(signum)) for s in SIGNALS}
    try:
        yield
    finally:
        _restore(previous)
        if pending:
            signal.raise_signal(pending[0])


def _restore(previous: dict[signal.Signals, Any]) -> None:
    for s, handler in previous.items():
        signal.signal(s, signal.SIG_DFL if handler is None else handler)  # None: installed outside Python
