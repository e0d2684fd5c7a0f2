"""Every flag of every command, fed hostile values (issue #24 F10): never a traceback. Each value is either a
one-line ``error:`` with exit 2 (argparse's own ``usage`` + ``error:`` counts) or a valid input processed
correctly (exit 0; ``bench`` exits 1 for a config that crashes the engine, with its crash record).

Runs in-process (``cli.main``): an uncaught exception fails the case with its traceback, and a value that would
run for long (a huge budget) trips the per-case alarm.
"""

from __future__ import annotations

import io
import re
import signal
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest

from sloguard_lib import cli

WORKLOAD = "concurrency=2,num_requests=2,input_len=16,output_len=4"
BASE: dict[str, list[str]] = {
    "tune": ["tune", "--backend", "sim", "--budget", "1", "--workload", WORKLOAD, "--quiet", "--out", "runs"],
    "bench": ["bench", "--backend", "sim", "--workload", WORKLOAD, "--json"],
    "space": ["space"],
    "report": ["report", "--results-dir", "runs"],
    "batch plan": ["batch", "plan", "--name", "sweep", "--seeds", "1", "--optimizers", "random", "--budget", "1"],
    "batch run": ["batch", "run", "--name", "nothing-planned"],
}
VALUES = ["", " ", "ü", "日本語", "nan", "inf", "-inf", "-1", "0", "0.5", "1e308", "1000000000000", "abc", "{}", "[]",
          '{"a":', '{"max_num_seqs": 8.5}', "../../escape", "/", "/dev/null", "/dev/zero", "DIR", "BINARY",
          "a=1;__import__('os').system('touch PWNED')", "--trust-remote-code", "max_num_seqs=4:2", "x" * 5000,
          "max_model_len=1:1e8", "gpu_memory_utilization=-5:5", "max_num_seqs=nan:inf", "num_requests=1000000000000",
          "rate=1e-300", "fp16,bogus"]


def options(command: str) -> Iterator[tuple[str, Any]]:
    parser = cli.build_parser()
    sub: Any = parser
    for word in command.split():
        sub = next(a for a in sub._actions if a.__class__.__name__ == "_SubParsersAction").choices[word]
    for action in sub._actions:
        if action.option_strings and action.nargs != 0 and action.dest != "help":
            yield action.option_strings[0], action


CASES = [(command, opt) for command in BASE for opt, _ in options(command)]


def _replace(argv: list[str], opt: str, value: str) -> list[str]:
    out, skip = [], False
    for i, a in enumerate(argv):
        if skip:
            skip = False
            continue
        if a == opt:
            skip = i + 1 < len(argv) and not argv[i + 1].startswith("--")
            continue
        out.append(a)
    return [*out, opt, value]


class _Alarm(Exception):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise _Alarm


@pytest.mark.parametrize(("command", "opt"), CASES, ids=[f"{c}:{o}" for c, o in CASES])
def test_no_value_of_any_flag_is_a_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str,
                                              opt: str) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "DIR").mkdir()
    (tmp_path / "BINARY").write_bytes(bytes(range(256)) * 4)
    old = signal.signal(signal.SIGALRM, _alarm)
    failures = []
    try:
        for i, value in enumerate(VALUES):
            value = str(tmp_path / value) if value in ("DIR", "BINARY") else value
            # each value its own study folder: a log left by a valid value must not answer for the next one
            argv = _replace([f"runs{i}" if a == "runs" else a for a in BASE[command]], opt, value)
            err, out = io.StringIO(), io.StringIO()
            signal.alarm(60)
            try:
                with redirect_stderr(err), redirect_stdout(out):
                    rc = cli.main(argv)
            except SystemExit as e:  # argparse: usage + one `error:` line
                rc = int(e.code or 0)
            except _Alarm:
                failures.append(f"{value[:40]!r}: still running after 60 s")
                continue
            except Exception as e:  # the finding: name the value, go on with the others
                failures.append(f"{value[:40]!r}: {type(e).__name__}: {str(e)[:200]}")
                continue
            finally:
                signal.alarm(0)
            text = err.getvalue().strip()
            if rc == 2 and not re.match(r"(sloguard[\w ]*: )?error: ", text.splitlines()[-1] if text else ""):
                failures.append(f"{value[:40]!r}: exit 2 without a one-line error: {text[-300:]!r}")
            elif rc not in (0, 1, 2) or (rc == 1 and command != "bench"):
                failures.append(f"{value[:40]!r}: exit {rc}: {text[-300:]!r}")
    finally:
        signal.signal(signal.SIGALRM, old)
    assert not (tmp_path / "PWNED").exists()
    assert not (tmp_path.parent / "escape").exists()
    assert not failures, "\n".join(failures)


CONTENTS = [b"", b"\n", b"null", b"[]", b"[1, 2]", b'"text"', b"42", b"{}", b"{{{", b"\xff\xfe\x00", b"a: [",
            b'{"max_num_seqs": {"low": "x"}}', b'{"max_num_seqs": {"low": NaN, "high": Infinity}}',
            b'{"max_num_seqs": {"low": 10, "high": 1}}', b'{"gpu_memory_utilization": {"low": -5, "high": 5}}',
            b'{"hidden_size": 0, "num_attention_heads": 0}', b'{"hidden_size": [1], "num_attention_heads": "8"}',
            b'{"hidden_size": NaN, "intermediate_size": 1, "num_hidden_layers": 1, "num_attention_heads": 1, '
            b'"vocab_size": 1}', b'{"hidden_size": null}', b'{"max_num_seqs": 8.5}', b"- {}\n- 3\n"]


@pytest.mark.parametrize("kind", ["space", "enqueue", "model"])
def test_no_content_of_any_config_file_is_a_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      kind: str) -> None:
    monkeypatch.chdir(tmp_path)
    failures = []
    for i, content in enumerate(CONTENTS):
        folder = tmp_path / f"m{i}"
        folder.mkdir()
        path = folder / ("config.json" if kind == "model" else "file.yaml")
        path.write_bytes(content)
        flag = {"space": ["--space", str(path)], "enqueue": ["--enqueue", str(path)], "model": ["--model", str(folder)]}
        argv = [*_replace([f"runs{i}" if a == "runs" else a for a in BASE["tune"]], *flag[kind])]
        err = io.StringIO()
        try:
            with redirect_stderr(err), redirect_stdout(io.StringIO()):
                rc = cli.main(argv)
        except Exception as e:  # the finding
            failures.append(f"{content[:40]!r}: {type(e).__name__}: {str(e)[:200]}")
            continue
        last = err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else ""
        if rc not in (0, 2) or (rc == 2 and not last.startswith("error: ")):
            failures.append(f"{content[:40]!r}: exit {rc}: {last[:200]!r}")
    assert not failures, "\n".join(failures)
