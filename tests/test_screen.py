"""Sim-screened real tuning: a wrong screen re-fitted to real trials, exact resume, and the fallback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sloguard_lib.engine.calibration import DEFAULT
from sloguard_lib.engine.sim import SimEngine
from sloguard_lib.hardware import get_gpu, resolve_model
from sloguard_lib.measure.capacity import CapacitySearch
from sloguard_lib.measure.slo import SLO
from sloguard_lib.measure.workload import Workload
from sloguard_lib.optimizers import Outcome, make_optimizer
from sloguard_lib.study.runner import StudySpec, default_space, log_path_for, run_study
from sloguard_lib.study.screen import ScreenedOptimizer, rescale
from sloguard_lib.study.trial import evaluate

WL = Workload(concurrency=16, num_requests=48, input_len=512, output_len=64)
WRONG = rescale(DEFAULT, 0.6, 1.6)
MODEL, GPU = resolve_model("qwen2-1.5b"), get_gpu("a100-40gb")
CONFIGS = [{"max_num_seqs": s, "max_num_batched_tokens": b, "enable_chunked_prefill": True}
           for s, b in ((32, 2048), (64, 1024), (16, 4096), (48, 512))]


def _itl(cal: Any, config: dict[str, Any]) -> float:
    return float(evaluate(SimEngine(MODEL, GPU, cal=cal), config, WL, SLO(500, 100), 1)["metrics"]["itl_p50_ms"])


def test_rescaling_the_decode_speed_scales_the_simulated_itl() -> None:
    assert 1.7 < _itl(rescale(DEFAULT, 2.0, 1.0), CONFIGS[0]) / _itl(DEFAULT, CONFIGS[0]) < 2.2


def test_three_real_trials_refit_a_screen_that_was_40_percent_off() -> None:
    space = default_space("qwen2-1.5b", "a100-40gb", WL)
    opt = ScreenedOptimizer(lambda s: make_optimizer("random", space, s), space, 0, model=MODEL, gpu=GPU,
                            workload=WL, slo=SLO(500, 100), cal=WRONG, screen_trials=5)
    held_out = CONFIGS[3]
    before = abs(_itl(opt.cal, held_out) / _itl(DEFAULT, held_out) - 1)
    for config in CONFIGS[:3]:  # "real" = the reference sim
        rec = evaluate(SimEngine(MODEL, GPU), space.finalize(config), WL, SLO(500, 100), 9)
        opt.tell(config, Outcome(rec["status"], rec["utility"], rec["crash_class"], rec["metrics"]))
    after = abs(_itl(opt.cal, held_out) / _itl(DEFAULT, held_out) - 1)
    assert before > 0.3 and after < 0.1, (before, after)


def _spec(budget: int, **kw: Any) -> StudySpec:
    return StudySpec(model="qwen2-1.5b", gpu="a100-40gb", optimizer="tba-tpe", budget=budget, workload=WL,
                     screen="sim", screen_trials=8, screen_cal=WRONG, **kw)


def _stable(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in json.loads(json.dumps(t)).items() if k not in ("wall_s", "finished")} for t in trials]


def test_a_screened_study_records_its_predictions_and_resumes_exactly(tmp_path: Path) -> None:
    full = run_study(_spec(5), tmp_path / "full")
    assert full.header["screen"]["trials"] == 8 and full.header["screen"]["calibration"]["bw_eff"] == WRONG.bw_eff
    assert all(t["phase"].startswith("screen-") for t in full.trials)
    guessed = [t for t in full.trials if "predicted_utility" in t["screen"]]
    assert len(guessed) >= 3 and all(t["screen"]["predicted_utility"] > 0 for t in guessed)
    lines = full.log_path.read_bytes().splitlines(keepends=True)
    log = log_path_for(tmp_path / "cut", _spec(5))
    log.parent.mkdir(parents=True)
    log.write_bytes(b"".join(lines[:3]))
    assert _stable(run_study(_spec(5), tmp_path / "cut", resume=True).trials) == _stable(full.trials)
    with pytest.raises(Exception, match="screen"):
        run_study(StudySpec(model="qwen2-1.5b", gpu="a100-40gb", optimizer="tba-tpe", budget=5, workload=WL),
                  tmp_path / "full", resume=True)


def test_a_screen_that_keeps_failing_hands_the_study_to_the_plain_optimizer(tmp_path: Path) -> None:
    space = default_space("qwen2-1.5b", "a100-40gb", WL)
    opt = ScreenedOptimizer(lambda s: make_optimizer("random", space, s), space, 0, model=MODEL, gpu=GPU,
                            workload=WL, slo=SLO(500, 100), cal=WRONG, screen_trials=5, fallback_error=0.0)
    for _ in range(4):
        p = opt.ask()
        if p.phase == "fallback":
            break
        opt.tell(p.params, Outcome("ok", 1.0, metrics={}))  # every prediction far off
    assert p.phase == "fallback" and p.screen is not None and p.screen["error"] > 0.5


def test_a_capacity_study_is_screened_by_the_capacity_the_sim_predicts(tmp_path: Path) -> None:
    """The screen must predict what the study ranks by: a level sustained, not a goodput at the workload's load."""
    study = run_study(_spec(4, objective="capacity", capacity_max=128), tmp_path)
    predicted = [(t["screen"]["predicted_utility"], t["capacity"]["level"]) for t in study.trials
                 if "predicted_utility" in t["screen"] and "capacity" in t]
    assert len(predicted) >= 3 and all(guess <= 128 for guess, _ in predicted), predicted  # levels, not tok/s
    # capacity hangs on max_num_seqs more than on the screen's 40 % wrong step costs: most guesses are right
    errors = sorted(abs(guess - level) / max(guess, level) for guess, level in predicted)
    assert errors[len(errors) // 2] <= 0.1, predicted
    assert not any(t["phase"] == "fallback" for t in study.trials)


def test_a_real_capacity_trial_that_sustained_nothing_is_scored_but_not_refitted_to() -> None:
    """Its metrics are of the lowest level probed, not of a load it sustained (level 0 is no load to simulate)."""
    space = default_space("qwen2-1.5b", "a100-40gb", WL)
    opt = ScreenedOptimizer(lambda s: make_optimizer("random", space, s), space, 0, model=MODEL, gpu=GPU,
                            workload=WL, slo=SLO(500, 100), cal=WRONG, screen_trials=3, capacity=CapacitySearch(0.99))
    opt.tell({"max_num_seqs": 8}, Outcome("slo_violation", 0.0, None, {"itl_p50_ms": 5.0, "ttft_p50_ms": 900.0}))
    assert len(opt.errors) == 1 and opt.cal == WRONG
