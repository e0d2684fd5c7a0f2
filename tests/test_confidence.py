"""Intervals on goodput, and --validate: finalists re-measured on fresh servers, the best lower bound recommended."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sloguard_lib.engine.sim import SimEngine
from sloguard_lib.errors import InputError
from sloguard_lib.hardware import get_gpu, resolve_model
from sloguard_lib.measure.confidence import request_bootstrap, t_interval, trial_interval
from sloguard_lib.measure.metrics import LoadResult, RequestResult
from sloguard_lib.measure.slo import SLO
from sloguard_lib.measure.workload import Workload
from sloguard_lib.study.incumbent import VALIDATED, config_interval, ranked, recommend
from sloguard_lib.study.runner import FINALISTS, StudySpec, log_path_for, run_study
from sloguard_lib.study.space import config_key
from sloguard_lib.study.trial import evaluate

WL = Workload(concurrency=32, num_requests=96, input_len=512, output_len=128)


def _load(ttfts_ms: list[float], duration_s: float = 10.0) -> LoadResult:
    return LoadResult([RequestResult(i, ok=True, prompt_tokens=8, output_tokens=100, ttft_s=t / 1000,
                                     itl_s=[0.01] * 99, e2e_s=t / 1000 + 0.99) for i, t in enumerate(ttfts_ms)],
                      duration_s)


def test_a_load_whose_requests_all_meet_the_slo_has_no_request_level_spread() -> None:
    assert request_bootstrap(_load([100.0] * 50), SLO(500, 100), 0) == (500.0, 500.0)  # 50 x 100 tok / 10 s


def test_the_request_bootstrap_covers_the_goodput_of_a_load_with_misses() -> None:
    load = _load([100.0] * 40 + [900.0] * 10)  # 40 good: goodput 400 tok/s
    lo, hi = request_bootstrap(load, SLO(500, 100), 0)
    # the share of good requests is binomial(50, 0.8): s.e. 0.057, so the interval is about 400 +- 110 tok/s
    assert 260 < lo < 360 and 440 < hi < 520


def test_loads_get_a_student_t_interval() -> None:
    lo, hi = t_interval([100.0, 110.0, 90.0])  # mean 100, s.d. 10: +- 4.30 x 10 / sqrt(3)
    assert (lo, hi) == pytest.approx((75.16, 124.84), abs=0.01)
    assert trial_interval([_load([100.0] * 10, d) for d in (1.0, 1.1, 0.9)], SLO(500, 100), 0)[0] < 1000


def test_a_simulated_trial_of_three_loads_has_an_interval_around_its_loads() -> None:
    engine = SimEngine(resolve_model("qwen2-1.5b"), get_gpu("a100-40gb"))
    config = {"max_num_seqs": 64, "max_num_batched_tokens": 2048, "enable_chunked_prefill": True}
    rec = evaluate(engine, config, dataclasses.replace(WL, repeats=3), SLO(500, 100), 5)
    loads, (lo, hi) = rec["goodput_loads_tok_s"], rec["goodput_ci95_tok_s"]
    assert len(loads) == 3 and lo < float(np.mean(loads)) < hi and hi - lo > 0
    assert lo < rec["metrics"]["goodput_tok_s"] < hi


def _spec(budget: int, validate: int) -> StudySpec:
    return StudySpec(model="qwen2-1.5b", gpu="a100-40gb", optimizer="tba-tpe", budget=budget, workload=WL,
                     validate=validate)


def _stable(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in json.loads(json.dumps(t)).items() if k not in ("wall_s", "finished")} for t in trials]


def test_validation_re_measures_the_finalists_interleaved_and_recommends_the_best_lower_bound(tmp_path: Path) -> None:
    k = 3
    result = run_study(_spec(10, k), tmp_path)
    search = [t for t in result.trials if t["phase"] != VALIDATED]
    checks = [t for t in result.trials if t["phase"] == VALIDATED]
    assert len(search) == 10 and [t["trial"] for t in checks] == list(range(10, 10 + FINALISTS * k))
    finals = [config_key(rs[0]["config"]) for _, rs in ranked(search)][:FINALISTS]
    assert [config_key(t["config"]) for t in checks] == finals * k  # 1, 2, 3, 1, 2, 3, ...
    assert len({tuple(t["goodput_loads_tok_s"]) for t in checks}) == len(checks)  # each on a fresh load seed
    best = result.best
    assert best is not None and best["validated"] and best["measurements"] == k
    by_final = {f: config_interval([t for t in checks if config_key(t["config"]) == f]) for f in finals}
    assert config_key(best["config"]) == max(by_final, key=lambda f: by_final[f][1])
    assert best["interval"] == pytest.approx(list(by_final[config_key(best["config"])][1:3]))


def test_a_study_cut_during_validation_resumes_to_the_same_records(tmp_path: Path) -> None:
    full = run_study(_spec(8, 2), tmp_path / "full")
    lines = full.log_path.read_bytes().splitlines(keepends=True)
    for cut in (8, 11):  # before the first re-measurement, and in the middle of them
        out = tmp_path / f"cut{cut}"
        log = log_path_for(out, _spec(8, 2))
        log.parent.mkdir(parents=True)
        log.write_bytes(b"".join(lines[: 1 + cut]))
        assert _stable(run_study(_spec(8, 2), out, resume=True).trials) == _stable(full.trials)
    with pytest.raises(InputError, match="validated already"):
        run_study(_spec(9, 2), tmp_path / "full", resume=True)


def test_without_validation_the_recommendation_is_the_incumbent_with_its_interval(tmp_path: Path) -> None:
    result = run_study(_spec(6, 0), tmp_path)
    best = result.best
    assert best is not None and best["validated"] is None
    lo, hi = best["interval"]
    assert lo <= best["mean_utility"] <= hi
    assert recommend([]) is None
    with pytest.raises(InputError, match="--validate"):
        _spec(6, -1)
