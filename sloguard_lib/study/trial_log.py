"""Durable JSONL trial log: the study's single source of truth.

Line 1 is a ``study`` header (optimizer, seed, space, SLO, workload, model, GPU, backend); every further
line is one ``trial`` record, appended with flush + fsync *before* the optimizer is told, so a kill at any
instant loses at most the trial in flight, which resume then re-runs. A torn last line (the process died
mid-write) is reported and ignored when reading, and moved aside to ``<log>.torn`` before appending, so
no byte already written is ever discarded. A resume that raises the budget appends an ``extend`` line
(the header itself is never rewritten); readers see the header with the latest budget.

One writer at a time: :func:`exclusive` holds an ``flock`` on ``<log>.lock`` for the whole study, so a
second ``tune --resume`` (or a second ``batch run``) on the same study is refused with the holder's pid
instead of interleaving duplicate trials (it did: 40 lines for 20 trials). The kernel drops the lock
when its holder dies, however it dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sloguard_lib.errors import InputError

SCHEMA_VERSION = 1
STATUSES = ("ok", "slo_violation", "crash", "error")


def _clean(obj: Any) -> Any:
    """JSON has no NaN/inf: store them as null so every line is strict JSON for any reader."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return _clean(obj.item())
    return obj


@dataclass
class LogContents:
    header: dict[str, Any]
    trials: list[dict[str, Any]]
    torn_tail: bytes  # bytes after the last complete line (a write cut short), empty if none


def _problem(rec: Any) -> str | None:
    """What makes a parsed line unusable as a log record (None: nothing). Readers index these fields freely, so a
    hand-edited or foreign line must be refused here, naming its line, not fail later with a traceback."""
    if not isinstance(rec, dict):
        return f"a JSON {type(rec).__name__}, not an object"
    if rec.get("kind") != "trial":
        return None
    if not isinstance(rec.get("trial"), int) or isinstance(rec.get("trial"), bool):
        return "a trial record without an integer 'trial'"
    if not isinstance(rec.get("params"), dict) or not isinstance(rec.get("config", {}), dict):
        return "a trial record whose 'params' or 'config' is not an object"
    if rec.get("status") not in STATUSES:
        return f"a trial record with status {rec.get('status')!r} (known: {', '.join(STATUSES)})"
    for key in ("utility", "gpu_seconds", "wall_s"):
        value = rec.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                  or not math.isfinite(value)):
            return f"a trial record whose {key!r} is {value!r}, not a finite number"
    return None


def read_log(path: str | Path) -> LogContents:
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise InputError(f"trial log {str(p)!r} does not exist") from None
    except OSError as e:
        raise InputError(f"cannot read trial log {str(p)!r}: {e.strerror}") from None
    end = data.rfind(b"\n") + 1
    body, tail = data[:end], data[end:]
    records: list[dict[str, Any]] = []
    for lineno, line in enumerate(body.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as e:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not UTF-8
            raise InputError(f"trial log {str(p)!r} line {lineno} is not valid JSON ({getattr(e, 'msg', e)}); "
                             "the log is corrupt beyond a torn last line") from None
        if (problem := _problem(rec)) is not None:
            raise InputError(f"trial log {str(p)!r} line {lineno} is {problem}; fix or remove that line")
        records.append(rec)
    if tail.strip():
        try:  # a complete record that merely lacks its newline is still a record
            rec = json.loads(tail)
        except ValueError:
            pass
        else:
            if _problem(rec) is None:
                records.append(rec)
                tail = b""
    if not records or records[0].get("kind") != "study":
        raise InputError(f"trial log {str(p)!r} has no study header on its first line")
    header = dict(records[0])
    for r in records[1:]:
        if r.get("kind") == "extend" and isinstance(r.get("budget"), int):
            header["budget"] = r["budget"]
    trials = [r for r in records[1:] if r.get("kind") == "trial"]
    return LogContents(header, trials, tail)


def holds_no_record(path: str | Path) -> bool:
    """An empty log, or one whose only bytes are a header cut short (the run was killed while writing it): there
    is nothing to resume, and a fresh start keeps those bytes in ``.torn``."""
    data = Path(path).read_bytes()
    if b"\n" in data:
        return False
    try:
        json.loads(data)
    except ValueError:  # empty, blank, or cut short
        return True
    return False


def is_trial_log(path: str | Path) -> bool:
    """Whether ``path`` starts with a study header: other JSONL (calibration grids, load lists) is not a log."""
    try:
        with open(path, "rb") as f:
            first = json.loads(f.readline() or b"null")
    except (OSError, ValueError):
        return False
    return isinstance(first, dict) and first.get("kind") == "study"


@contextlib.contextmanager
def exclusive(path: str | Path) -> Iterator[None]:
    """Hold the study's write lock (``<log>.lock``) or fail at once naming the process that holds it."""
    log = Path(path)
    lock = log.with_name(log.name + ".lock")
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        raise InputError(f"cannot write the trial log in {str(log.parent)!r}: {e.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise InputError(f"trial log {str(log)!r} is being written by another sloguard (lock held by pid "
                             f"{holder}); wait for it, or stop it and then --resume") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


class TrialLog:
    """Append-only writer. Opening an existing log repairs a torn tail (saved to ``.torn``) first."""

    def __init__(self, path: str | Path, header: Mapping[str, Any] | None = None) -> None:
        self.path = Path(path)
        for p in (self.path, self.path.with_suffix(self.path.suffix + ".torn")):
            if p.is_symlink():  # written through, it would change a file elsewhere (another study's, say)
                raise InputError(f"{str(p)!r} is a symbolic link; the trial log and its .torn must be plain files "
                                 "(pass --out the real folder)")
        try:  # fail before a trial runs, not after it (its record would have nowhere to go)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            open(self.path, "ab").close()
        except OSError as e:
            raise InputError(f"cannot write the trial log {str(self.path)!r}: {e.strerror}") from None
        if self.path.stat().st_size > 0:
            self._repair_tail()  # a header cut short leaves the file empty: it is written afresh below
        if self.path.stat().st_size == 0:
            if header is None:
                raise InputError(f"trial log {str(self.path)!r} does not exist and no study header was given")
            self._append({"kind": "study", "schema": SCHEMA_VERSION, **header})

    def _repair_tail(self) -> None:
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        tail = data[end:]
        if not tail:
            return
        try:
            json.loads(tail)
        except json.JSONDecodeError:
            with open(self.path.with_suffix(self.path.suffix + ".torn"), "ab") as f:
                f.write(tail + b"\n")
            with open(self.path, "r+b") as f:
                f.truncate(end)
                os.fsync(f.fileno())
        else:
            with open(self.path, "ab") as f:
                f.write(b"\n")
                os.fsync(f.fileno())

    def append_trial(self, record: Mapping[str, Any]) -> None:
        self._append({"kind": "trial", **record})

    def extend(self, budget: int, trials_done: int, when: str) -> None:
        """Record a budget raised on resume (the header keeps the budget the study was created with)."""
        self._append({"kind": "extend", "budget": budget, "trials_done": trials_done, "time": when})

    def _append(self, record: Mapping[str, Any]) -> None:
        line = json.dumps(_clean(record), sort_keys=False, separators=(",", ":")) + "\n"
        with open(self.path, "ab") as f:
            f.write(line.encode())
            f.flush()
            os.fsync(f.fileno())


def git_commit() -> str | None:
    """The code version that produced a record, when running from a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=Path(__file__).parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
