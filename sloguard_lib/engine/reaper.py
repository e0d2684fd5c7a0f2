"""Process groups of the servers we start: end them whole, and find the ones a killed run left behind.

``vllm serve`` runs in its own session (so a terminal's Ctrl-C reaches us, not it, and we decide how it ends),
which makes it our job to end its whole tree: the API server, the engine-core process and its workers. Each
launch writes ``<pgid> <its start time> <our pid> <our start time>`` to a pid file beside its log; teardown
deletes it. A pid file whose writer is gone when the next run of the same study starts means that writer was
SIGKILLed mid-trial (nothing can run our cleanup then): :func:`reap` ends that group before anything else is
launched. A file whose writer still runs is left alone (another ``sloguard`` on the same study, which its lock
will refuse). Start times (``/proc/<pid>/stat`` field 22) guard against recycled pids.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


def start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), or None if it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]  # field 22; the command name (field 2) may hold spaces


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def kill_group(pgid: int, grace_s: float) -> None:
    """SIGTERM the group, SIGKILL whatever is left after ``grace_s``, and wait until none of it exists (for a
    group whose leader is not our child: init reaps it)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    wait_gone(pgid)


def wait_gone(pgid: int, timeout_s: float = 10.0) -> None:
    """Wait until no process of the group exists (SIGKILLed ones vanish once their parent reaps them)."""
    deadline = time.monotonic() + timeout_s
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _write_whole(pid_file: Path, text: str) -> None:
    """Write beside, then rename: a reader (the next run's :func:`reap`, a test) sees no file or all of it. A plain
    ``write_text`` left the file empty for a moment, and a CI run read it then (``IndexError`` on its split)."""
    partial = pid_file.with_name(pid_file.name + ".partial")
    partial.write_text(text)
    os.replace(partial, pid_file)


def record(pid_file: Path, pgid: int) -> None:
    _write_whole(pid_file, f"{pgid} {start_time(pgid)} {os.getpid()} {start_time(os.getpid())}\n")


def reap(folder: Path, grace_s: float = 3.0) -> list[int]:
    """End every group recorded under ``folder`` whose writer is dead and whose leader is still the process that
    writer started."""
    ended = []
    for pid_file in sorted(folder.glob("*.pid")):
        try:
            pgid_text, started, writer, writer_started = pid_file.read_text().split()
            pgid = int(pgid_text)
        except (OSError, ValueError):
            pid_file.unlink(missing_ok=True)
            continue
        if start_time(int(writer)) == writer_started:
            continue  # its sloguard is alive and will end it
        if start_time(pgid) == started or (start_time(pgid) is None and group_alive(pgid)):
            kill_group(pgid, grace_s)
            ended.append(pgid)
        pid_file.unlink(missing_ok=True)
    return ended


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, their children, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            if d.name.isdigit():
                ppid = int((d / "stat").read_text().rpartition(")")[2].split()[1])
                children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], list(children.get(pid, []))
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return sorted(out)


def record_processes(pid_file: Path, pids: list[int]) -> None:
    """Like :func:`record`, for processes that are not a group of their own (a local Ray's head processes)."""
    me = os.getpid()
    lines = [f"{me} {start_time(me)}"] + [f"{p} {start_time(p)}" for p in pids if start_time(p) is not None]
    _write_whole(pid_file, "\n".join(lines) + "\n")


def reap_processes(folder: Path) -> list[int]:
    """SIGKILL the processes recorded by :func:`record_processes` under ``folder`` whose writer is dead and
    that are still the processes it recorded."""
    ended = []
    for pid_file in sorted(folder.glob("*.pids")):
        try:
            (writer, writer_started), *rows = (line.split() for line in pid_file.read_text().splitlines())
        except (OSError, ValueError):
            pid_file.unlink(missing_ok=True)
            continue
        if start_time(int(writer)) == writer_started:
            continue
        for pid, started in rows:
            if start_time(int(pid)) == started:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(pid), signal.SIGKILL)
                ended.append(int(pid))
        pid_file.unlink(missing_ok=True)
    return ended
