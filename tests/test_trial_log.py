from __future__ import annotations

import json

import pytest

from sloguard_lib.errors import InputError
from sloguard_lib.study.trial_log import TrialLog, read_log

#: the fields every reader indexes (a real record has many more)
T = {"params": {}, "status": "ok"}


def test_append_read_and_nan_is_null(tmp_path) -> None:  # type: ignore[no-untyped-def]
    log = TrialLog(tmp_path / "t.jsonl", {"study_id": "s"})
    log.append_trial({"trial": 0, **T, "metrics": {"ttft_p99_ms": float("nan")}})
    contents = read_log(tmp_path / "t.jsonl")
    assert contents.header["study_id"] == "s"
    assert contents.trials == [{"kind": "trial", "trial": 0, **T, "metrics": {"ttft_p99_ms": None}}]


def test_torn_last_line_is_ignored_then_moved_aside(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "t.jsonl"
    log = TrialLog(path, {"study_id": "s"})
    log.append_trial({"trial": 0, **T})
    with open(path, "ab") as f:
        f.write(b'{"kind":"trial","trial":1,"met')  # killed mid-write
    contents = read_log(path)
    assert [t["trial"] for t in contents.trials] == [0]
    assert contents.torn_tail.startswith(b'{"kind":"trial","trial":1')
    TrialLog(path).append_trial({"trial": 1, **T})  # reopening repairs the tail before appending
    assert [t["trial"] for t in read_log(path).trials] == [0, 1]
    assert b'"trial":1,"met' in (tmp_path / "t.jsonl.torn").read_bytes()
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_complete_record_without_newline_is_kept(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "t.jsonl"
    TrialLog(path, {"study_id": "s"})
    with open(path, "ab") as f:
        f.write(b'{"kind":"trial","trial":0,"params":{},"status":"ok"}')
    assert len(read_log(path).trials) == 1
    TrialLog(path).append_trial({"trial": 1, **T})
    assert [t["trial"] for t in read_log(path).trials] == [0, 1]


def test_corruption_in_the_middle_is_a_named_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "t.jsonl"
    path.write_text('{"kind":"study"}\nnot json\n{"kind":"trial","trial":0,"params":{},"status":"ok"}\n')
    with pytest.raises(InputError, match="line 2 is not valid JSON"):
        read_log(path)
    path.write_text('{"kind":"trial","trial":0,"params":{},"status":"ok"}\n')
    with pytest.raises(InputError, match="no study header"):
        read_log(path)


@pytest.mark.parametrize(("line", "named"), [
    (b"[1, 2, 3]", "line 2 is a JSON list, not an object"),
    (b'"text"', "line 2 is a JSON str, not an object"),
    (b'{"kind":"trial","trial":0,"status":"ok"}', "'params' or 'config' is not an object"),
    (b'{"kind":"trial","params":{},"status":"ok"}', "without an integer 'trial'"),
    (b'{"kind":"trial","trial":0,"params":{},"status":"weird"}', "status 'weird'"),
    (b'{"kind":"trial","trial":0,"params":{},"status":"ok","utility":NaN}', "'utility' is nan"),
    (b'{"kind":"trial","trial":0,"params":{},"status":"ok","gpu_seconds":"x"}', "'gpu_seconds' is 'x'"),
    (b'\xff\xfe{"kind":"trial"}', "line 2 is not valid JSON"),
])
def test_a_line_no_reader_could_use_is_named(tmp_path, line: bytes, named: str) -> None:  # type: ignore[no-untyped-def]
    """Issue #24 F8/F9: each of these was a traceback (KeyError, AttributeError, ValueError) in `tune --resume`."""
    path = tmp_path / "t.jsonl"
    path.write_bytes(b'{"kind":"study"}\n' + line + b"\n")
    with pytest.raises(InputError, match="line 2 ") as err:
        read_log(path)
    assert named in str(err.value)


def test_storage_that_cannot_hold_a_log_is_named(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(InputError, match="cannot read trial log .*Is a directory"):
        read_log(tmp_path / "dir.jsonl")
    target = tmp_path / "elsewhere.jsonl"
    target.write_text('{"kind":"study"}\n')
    (tmp_path / "link.jsonl").symlink_to(target)
    with pytest.raises(InputError, match="is a symbolic link"):
        TrialLog(tmp_path / "link.jsonl")
    assert target.read_text() == '{"kind":"study"}\n'  # not written through
