from __future__ import annotations

from pathlib import Path

import pytest

from sloguard_lib.engine.crash import classify_log

CORPUS = sorted((Path(__file__).parent / "data" / "crash_logs").glob("*/*.log"))


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_real_logs_are_classified_as_labelled(path: Path) -> None:
    rc = -9 if path.parent.name == "killed" else 1  # a killed server leaves no error line: its signal decides
    c = classify_log(path.read_text(errors="replace"), returncode=rc)
    assert c.crash_class == path.parent.name
    if c.crash_class == "killed":  # a whole healthy start-up log: no rule may fire on it
        assert c.line == "terminated by signal 9 (SIGKILL)"
    else:
        assert c.line in c.excerpt and c.line in path.read_text()


def test_corpus_is_not_empty() -> None:
    assert len(CORPUS) >= 12


@pytest.mark.parametrize(("text", "rc", "cls"), [
    ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", 1, "oom"),
    ("RuntimeError: CUDA error: an illegal memory access was encountered", 1, "cuda_error"),
    ("vllm serve: error: unrecognized arguments: --max-num-seq 8", 2, "invalid_config"),
    ("INFO starting\nINFO loading weights", -9, "killed"),
    ("INFO starting\nsomething odd", 1, "unknown"),
])
def test_rules(text: str, rc: int, cls: str) -> None:
    assert classify_log(text, returncode=rc).crash_class == cls
