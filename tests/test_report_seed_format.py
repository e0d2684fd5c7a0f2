"""The paper's table from the paper's own data: the original SLO-Guard's concurrent multi-seed results
(tests/data/slo_guard_original, its commit bb40a7b) read by `sloguard report`, with its definitions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sloguard_lib.analysis import report
from sloguard_lib.cli import main

DATA = Path(__file__).parent / "data" / "slo_guard_original" / "multiseed_concurrent"


@pytest.fixture
def original(tmp_path: Path) -> Path:
    return Path(shutil.copytree(DATA, tmp_path / "multiseed_concurrent"))


def test_seed_definitions_reproduce_its_summary_json(original: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--results-dir", str(original), "--definitions", "seed",
                 "--output", str(original / "figs")]) == 0
    out = capsys.readouterr().out
    assert "definitions: seed" in out and "one-sided" in out
    ours = json.loads((original / "summary_seed.json").read_text())["optimizers"]
    theirs = json.loads((original / "summary.json").read_text())  # untouched: ours went to summary_seed.json
    for opt in ("random", "tba-tpe"):
        t = theirs["per_optimizer"][opt]
        for key, mine in (("fast_cluster_count", "fast_trials"), ("post_hit_consistency", "post_hit_consistency"),
                          ("best_latency_ms", "best_latency_ms"), ("first_fast_hit_trial", "first_fast_hit_trial")):
            assert ours[opt][mine]["mean"] == pytest.approx(t[key]["mean"], abs=1e-9)
            assert ours[opt][mine]["sd"] == pytest.approx(t[key]["std"], abs=1e-9)
        assert (ours[opt]["trials"], ours[opt]["feasible"], ours[opt]["crashes"]) == (
            t["total_trials"], t["total_feasible"], t["total_crashes"]) == (75, 75, 0)
    for key, mine in (("fast_cluster_count", "fast_trials"), ("post_hit_consistency", "post_hit_consistency"),
                      ("best_latency_ms", "best_latency_ms")):
        assert ours["tba-tpe"][mine]["p_vs_random"] == pytest.approx(theirs["mann_whitney"][key]["p"], abs=1e-12)
    # the printed table, to the paper's precision
    for text in ("7.40 ± 2.51", "10.20 ± 1.10", "0.0142 (one-sided)", "0.539 ± 0.224", "0.876 ± 0.123",
                 "0.0104 (one-sided)", "470.52 ± 10.00", "465.69 ± 2.26", "0.841", "75 / 75"):
        assert text in out, text


def test_our_definitions_on_its_data_name_themselves(original: Path) -> None:
    df = report.load_trials(original)  # auto-detected layout
    summ = report.summary(report.per_run(df))
    assert summ["definitions"] == "sloguard"
    # the natural break on its (mean) latencies finds the same fast clusters as its 1000 ms line
    assert summ["optimizers"]["random"]["fast_trials"]["mean"] == pytest.approx(7.4)
    assert summ["optimizers"]["tba-tpe"]["fast_trials"]["mean"] == pytest.approx(10.2)
    assert summ["optimizers"]["tba-tpe"]["fast_trials"]["test"] == "two-sided"
    assert 0.014 < summ["optimizers"]["tba-tpe"]["fast_trials"]["p_vs_random"] < 0.05  # two-sided: about double
