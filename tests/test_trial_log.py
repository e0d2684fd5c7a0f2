from __future__ import annotations

import json

import pytest

from sloguard_lib.errors import InputError
from sloguard_lib.trial_log import TrialLog, read_log


def test_append_read_and_nan_is_null(tmp_path) -> None:  # type: ignore[no-untyped-def]
    log = TrialLog(tmp_path / "t.jsonl", {"study_id": "s"})
    log.append_trial({"trial": 0, "metrics": {"ttft_p99_ms": float("nan")}})
    contents = read_log(tmp_path / "t.jsonl")
    assert contents.header["study_id"] == "s"
    assert contents.trials == [{"kind": "trial", "trial": 0, "metrics": {"ttft_p99_ms": None}}]


def test_torn_last_line_is_ignored_then_moved_aside(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "t.jsonl"
    log = TrialLog(path, {"study_id": "s"})
    log.append_trial({"trial": 0})
    with open(path, "ab") as f:
        f.write(b'{"kind":"trial","trial":1,"met')  # killed mid-write
    contents = read_log(path)
    assert [t["trial"] for t in contents.trials] == [0]
    assert contents.torn_tail.startswith(b'{"kind":"trial","trial":1')
    TrialLog(path).append_trial({"trial": 1})  # reopening repairs the tail before appending
    assert [t["trial"] for t in read_log(path).trials] == [0, 1]
    assert b'"trial":1,"met' in (tmp_path / "t.jsonl.torn").read_bytes()
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_complete_record_without_newline_is_kept(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "t.jsonl"
    TrialLog(path, {"study_id": "s"})
    with open(path, "ab") as f:
        f.write(b'{"kind":"trial","trial":0}')
    assert len(read_log(path).trials) == 1
    TrialLog(path).append_trial({"trial": 1})
    assert [t["trial"] for t in read_log(path).trials] == [0, 1]


def test_corruption_in_the_middle_is_a_named_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "t.jsonl"
    path.write_text('{"kind":"study"}\nnot json\n{"kind":"trial","trial":0}\n')
    with pytest.raises(InputError, match="line 2 is not valid JSON"):
        read_log(path)
    path.write_text('{"kind":"trial"}\n')
    with pytest.raises(InputError, match="no study header"):
        read_log(path)
