"""A warm spare interpreter: vLLM imported while the previous trial runs, then handed the next trial's argv.

Why: on the H100 a plain ``vllm serve`` spends ~24 s importing the API server and ~26 s more until the
engine-core process (started by ``spawn``, so it imports everything again) is up, of a 75-110 s start
(results/h100/README.md). None of that depends on the trial's flags. The spare is started right after a trial's
server, imports the launcher's module and what it imports lazily, writes ``ready`` and blocks on stdin; the
next trial sends its argv and log path, and the spare *becomes* that server: it points its stdout/stderr at the
trial's log and runs the launcher module as ``__main__`` (what ``python -m`` does). The server therefore is a
fresh process launched with the trial's exact flags; it only skips re-reading modules. With
``VLLM_WORKER_MULTIPROC_METHOD=fork`` (vLLM's library default; its CLI sets ``spawn`` only when the variable is
unset) the engine core is forked from it and inherits the imports too. Nothing of the engine core's own is
pre-imported: on the H100, pre-importing vLLM's GPU worker and model runner before the fork broke the forked
engine core's Triton and Inductor autotuning ("Pointer argument cannot be accessed from Triton (cpu tensor?)",
"'_EventPlaceholder' object has no attribute 'elapsed_time'": 15 of 15 starts failed), while a parent that
imported only the API server is what vLLM's own library mode forks.

Robustness: a spare that dies or fails to import before ``ready`` is an infrastructure fault; the launcher then
starts the trial the plain way and records why. A spare whose parent dies (even by SIGKILL) exits at once: a
watcher thread polls the parent pid until the hand-off, and an EOF on stdin ends a spare that was never used.

This file is also the spare's program (``python spare.py TARGET [PREIMPORT ...]``): below ``if __name__``
it may import nothing outside the standard library, since it runs in vLLM's interpreter.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

READY = b"ready\n"
TAKEN = b"taken\n"  # the spare read the trial: from here on it is the server, and its fate is the trial's
#: what a launcher module imports only when it runs (``vllm serve``'s ``main()`` imports its subcommands lazily:
#: without these the warm start still spent 8-14 s importing after the hand-off on the H100)
LAZY_IMPORTS: dict[str, tuple[str, ...]] = {
    "vllm.entrypoints.cli.main": (
        "vllm.entrypoints.cli.benchmark.main", "vllm.entrypoints.cli.collect_env", "vllm.entrypoints.cli.launch",
        "vllm.entrypoints.cli.openai", "vllm.entrypoints.cli.run_batch", "vllm.entrypoints.cli.serve",
        "vllm.entrypoints.openai.api_server", "vllm.entrypoints.serve.utils.api_utils",
        "vllm.utils.argparse_utils"),
}


class SpareFault(Exception):
    """The spare could not take the trial; the message says why (it goes into the trial's record)."""


def split_launcher(cmd: list[str]) -> tuple[str, str, list[str]] | None:
    """``[python, -m, module, *rest]`` or ``[python, script.py, *rest]`` -> (python, target, rest); else None
    (an executable such as ``vllm`` itself cannot be pre-imported)."""
    if len(cmd) >= 3 and cmd[1] == "-m":
        return cmd[0], cmd[2], cmd[3:]
    if len(cmd) >= 2 and cmd[1].endswith(".py"):
        return cmd[0], cmd[1], cmd[2:]
    return None


class Spare:
    """One pre-imported interpreter, in its own session (its pid is its process group, like a plain server)."""

    def __init__(self, python: str, target: str, env: dict[str, str], log_path: Path) -> None:
        self.target, self.env, self.log_path = target, env, log_path
        preimports = LAZY_IMPORTS.get(target, ())
        self._stderr = open(log_path, "wb")  # noqa: SIM115 - closed in take() / stop()
        self.proc = subprocess.Popen([python, __file__, target, *preimports], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._stderr, env=env, start_new_session=True)
        self.started = time.perf_counter()

    def take(self, argv: list[str], log_path: Path, env: dict[str, str], timeout_s: float) -> subprocess.Popen[bytes]:
        """Hand the trial over: wait until imported, then send argv; the returned process is the server. On any
        fault (and on an interrupt while waiting) the spare is stopped."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            if env != self.env:
                raise SpareFault("the environment changed since the spare started")
            if self._read(len(READY), timeout_s) != READY:
                raise SpareFault(f"spare not ready after {time.perf_counter() - self.started:.0f} s "
                                 f"(exit {self.proc.poll()}): {self._last_error()}")
            # what the spare printed while importing (warnings) precedes the server's own output, as in a plain start
            with open(log_path, "ab") as log:
                log.write(self.log_path.read_bytes())
            self.proc.stdin.write(json.dumps({"argv": argv, "log": str(log_path)}).encode() + b"\n")
            self.proc.stdin.flush()
            if self._read(len(TAKEN), 10.0) != TAKEN:
                raise SpareFault(f"spare died at the hand-off (exit {self.proc.poll()})")
        except BaseException as e:
            self.stop()
            if isinstance(e, OSError):  # a pipe broke: it died between our checks
                raise SpareFault(f"spare gone: {e}") from None
            raise
        finally:
            self._stderr.close()
            self.log_path.unlink(missing_ok=True)
        self.proc.stdin.close()
        self.proc.stdout.close()
        return self.proc

    def _read(self, n: int, timeout_s: float) -> bytes:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        return os.read(self.proc.stdout.fileno(), n) if ready else b""

    def _last_error(self) -> str:
        lines = self.log_path.read_text(errors="replace").strip().splitlines()
        return lines[-1][:300] if lines else "no output"

    def stop(self) -> None:
        """An unused spare holds no GPU and no port: kill it outright."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):  # closing flushes what a dead spare will never read
                    pipe.close()
        self._stderr.close()
        self.log_path.unlink(missing_ok=True)


def _watch_parent(parent: int, handed_off: list[bool]) -> None:
    while not handed_off:
        if os.getppid() != parent:
            os._exit(3)
        time.sleep(0.2)


def _serve(argv: list[str]) -> None:
    """The spare's program: pre-import, report ``ready``, become the server the first stdin line describes."""
    import importlib
    import runpy
    import threading

    target, preimports = argv[0], argv[1:]
    ready_fd = os.dup(1)  # the pipe to the tuner carries only READY: import-time prints go to our stderr log
    os.dup2(2, 1)
    handed_off: list[bool] = []
    watcher = threading.Thread(target=_watch_parent, args=(os.getppid(), handed_off), daemon=True)
    watcher.start()
    if not target.endswith(".py"):
        try:
            importlib.import_module(target)
        except BaseException as e:  # any failure of the launcher's module: no spare
            print(f"spare: cannot import {target}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            os._exit(3)
    for name in preimports:
        try:
            importlib.import_module(name)
        except Exception:  # optional: the engine core imports what it needs itself
            continue
    sys.stdout.flush()
    sys.stderr.flush()
    os.write(ready_fd, READY)
    line = sys.stdin.readline()
    handed_off.append(True)
    watcher.join()
    if not line:
        return  # the tuner is done with us (or gone)
    os.write(ready_fd, TAKEN)
    os.close(ready_fd)
    msg = json.loads(line)
    fd = os.open(msg["log"], os.O_WRONLY | os.O_APPEND)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.close(null)
    sys.argv = [target, *msg["argv"]]
    if target.endswith(".py"):
        runpy.run_path(target, run_name="__main__")
    else:
        runpy.run_module(target, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    # run by path, Python put this file's folder first on sys.path, where ``vllm.py`` (our backend) would shadow
    # vLLM itself: search the working directory instead, as ``python -m`` does
    sys.path[0] = os.getcwd()
    _serve(sys.argv[1:])
