from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sloguard_lib.errors import InputError
from sloguard_lib.optimizers import OPTIMIZERS, Outcome, make_optimizer
from sloguard_lib.optimizers.base import Proposal
from sloguard_lib.optimizers.tba import TBA
from sloguard_lib.study.space import build_serving_space, config_key

SPACE = build_serving_space()


def _outcome(params: dict) -> Outcome:  # type: ignore[type-arg]
    """Crashes below 0.7 memory share; SLO misses (which make TBA probe flags) below a utility of 150."""
    if params["gpu_memory_utilization"] < 0.7:
        return Outcome("crash", None)
    utility = float(params["max_num_seqs"] * (2 - params["enforce_eager"]))
    return Outcome("ok" if utility >= 150 else "slo_violation", utility)


def _drive(name: str, seed: int, n: int) -> list[dict]:  # type: ignore[type-arg]
    opt = make_optimizer(name, SPACE, seed)
    out = []
    for _ in range(n):
        params = opt.ask().params
        SPACE.validate(params)
        opt.tell(params, _outcome(params))
        out.append(params)
    return out


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_seeded_valid_and_deterministic(name: str) -> None:
    a, b, c = _drive(name, 3, 12), _drive(name, 3, 12), _drive(name, 4, 12)
    assert a == b
    assert a != c


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_replayed_history_gives_the_same_next_proposal(name: str) -> None:
    history = _drive(name, 5, 9)
    fresh = make_optimizer(name, SPACE, 5)
    for params in history[:8]:
        fresh.tell(params, _outcome(params))
    assert fresh.ask().params == history[8]


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_survives_all_crash_history(name: str) -> None:
    opt = make_optimizer(name, SPACE, 0)
    for _ in range(10):
        opt.tell(opt.ask().params, Outcome("crash", None, crash_class="oom"))
    SPACE.validate(opt.ask().params)


def test_tpe_exploits_after_startup() -> None:
    """With utility = max_num_seqs, TPE's later picks should sit high in the range, unlike random's."""
    def late_mean(name: str) -> float:
        opt = make_optimizer(name, SPACE, 11)
        vals = []
        for _ in range(25):
            p = opt.ask().params
            opt.tell(p, Outcome("ok", float(p["max_num_seqs"])))
            vals.append(p["max_num_seqs"])
        return sum(vals[-10:]) / 10
    tpe, rnd = late_mean("tpe"), late_mean("random")
    assert tpe > 64 and tpe > rnd * 1.2


def test_unknown_optimizer() -> None:
    with pytest.raises(InputError, match="unknown optimizer 'bayes'"):
        make_optimizer("bayes", SPACE, 0)


def test_crash_guard_learns_a_blacklist_and_gates_the_forest() -> None:
    from sloguard_lib.optimizers.guard import CrashGuard

    guard = CrashGuard(SPACE, seed=0)
    rng = __import__("numpy").random.default_rng(0)
    base = SPACE.sample(rng)
    for gmu in (0.60, 0.62, 0.64):
        guard.observe(base | {"gpu_memory_utilization": gmu}, crashed=True)
    guard.observe(base | {"gpu_memory_utilization": 0.80}, crashed=False)
    assert any(str(r) == "gpu_memory_utilization <= 0.64" for box in guard.blacklist for r in box)
    assert not guard.allows(base | {"gpu_memory_utilization": 0.63})
    assert guard.allows(base | {"gpu_memory_utilization": 0.90})
    assert guard.oob_score is None  # 4 samples: too few for the forest to be trusted
    for i in range(12):
        gmu = 0.60 + 0.01 * i
        guard.observe(base | {"gpu_memory_utilization": round(gmu, 2)}, crashed=gmu < 0.7)
        guard.observe(base | {"gpu_memory_utilization": round(gmu + 0.25, 2)}, crashed=False)
    assert guard.oob_score is not None and guard.oob_score >= guard.oob_threshold
    assert guard.crash_probability(base | {"gpu_memory_utilization": 0.61}) > 0.5
    assert guard.crash_probability(base | {"gpu_memory_utilization": 0.93}) < 0.5


def test_memory_prior_keeps_impossible_configs_from_launching() -> None:
    from sloguard_lib.hardware import get_gpu, memory_prior, resolve_model

    fits = memory_prior(resolve_model("llama-3.1-8b"), get_gpu("l4-24gb"))
    opt = make_optimizer("tba", SPACE, 0, prior=fits)
    for _ in range(15):
        params = opt.ask().params
        assert fits(SPACE.finalize(params))
        opt.tell(params, Outcome("ok", 1.0))


def test_tba_tpe_switches_phase_and_records_it() -> None:
    opt = make_optimizer("tba-tpe", SPACE, 2, budget=15)
    phases = []
    for _ in range(12):
        p = opt.ask()
        phases.append(p.phase)
        opt.tell(p.params, Outcome("ok", float(p.params["max_num_seqs"])))
    assert phases[0].startswith("tba") and phases[-1] == "tpe"
    switch = phases.index("tpe")
    assert switch == 6  # 40% of the budget, with >= 3 feasible trials by then
    assert all(ph == "tpe" for ph in phases[switch:])


def _tba_tpe_after_switch(usage: dict[str, float]) -> tuple[object, dict]:  # type: ignore[type-arg]
    """A tba-tpe study told 6 feasible trials (it switches to phase 2 there); its best has ``usage``."""
    opt = make_optimizer("tba-tpe", SPACE, 2, budget=15)
    rng = np.random.default_rng(0)
    base = {"quantization": "fp16", "max_num_seqs": 16, "gpu_memory_utilization": 0.9, "max_model_len": 4096,
            "enforce_eager": False, "enable_chunked_prefill": False, "enable_prefix_caching": False}
    best = base | {"max_num_batched_tokens": 8192}
    for i in range(5):
        opt.tell(SPACE.sample(rng), Outcome("ok", 10.0 + i, slo_usage={"ttft_p99_ms": 0.5, "itl_p99_ms": 0.5}))
    opt.tell(best, Outcome("ok", 100.0, slo_usage=usage))
    return opt, best


def test_tba_tpe_probes_a_small_chunked_step_budget_when_the_itl_slo_binds() -> None:
    opt, best = _tba_tpe_after_switch({"ttft_p99_ms": 0.6, "itl_p99_ms": 0.9})
    proposal = opt.ask()  # type: ignore[attr-defined]
    assert proposal.phase == "step-probe"
    assert proposal.params == best | {"enable_chunked_prefill": True, "max_num_batched_tokens": 512}
    opt, _ = _tba_tpe_after_switch({"ttft_p99_ms": 0.9, "itl_p99_ms": 0.6})  # TTFT binds: a small budget hurts it
    assert opt.ask().phase == "tpe"  # type: ignore[attr-defined]


def test_tba_tpe_fits_the_step_budget_to_the_itl_slo_after_its_probe() -> None:
    """ITL p99 grows with the budget: a probe at 512 tokens using 45 % of the ITL SLO puts 90 % at 1,024."""
    def after_probe(itl_usage: float) -> tuple[dict, Proposal]:  # type: ignore[type-arg]
        opt, _ = _tba_tpe_after_switch({"ttft_p99_ms": 0.6, "itl_p99_ms": 0.9})
        probe = opt.ask().params  # type: ignore[attr-defined]
        opt.tell(probe, Outcome("ok", 120.0, slo_usage={"ttft_p99_ms": 0.7, "itl_p99_ms": itl_usage}))  # type: ignore[attr-defined]
        return probe, opt.ask()  # type: ignore[attr-defined]

    probe, proposal = after_probe(0.45)
    assert (proposal.phase, proposal.params) == ("step-fit", probe | {"max_num_batched_tokens": 1024})
    _, proposal = after_probe(0.8)  # 0.9 / 0.8: a 12.5 % larger budget is within one load's noise
    assert proposal.phase == "tpe"


def test_tba_tpe_probes_from_an_slo_miss_when_nothing_met_the_slo() -> None:
    opt = make_optimizer("tba-tpe", SPACE, 2, budget=15)
    rng = np.random.default_rng(0)
    for _ in range(11):
        opt.tell(SPACE.sample(rng), Outcome("slo_violation", 1.0, slo_usage={"ttft_p99_ms": 1.5, "itl_p99_ms": 0.5}))
    worst_itl = SPACE.sample(rng) | {"enforce_eager": True}
    opt.tell(worst_itl, Outcome("slo_violation", 9.0, slo_usage={"ttft_p99_ms": 0.5, "itl_p99_ms": 3.0}))
    proposal = opt.ask()  # 12 trials without 3 feasible ones: phase 2 starts, from the best miss (ITL binds)
    assert proposal.phase == "step-probe" and proposal.params["max_num_batched_tokens"] == 512
    assert proposal.params["enable_chunked_prefill"] and not proposal.params["enforce_eager"]


def test_tba_tpe_spends_its_last_trial_confirming_a_close_incumbent() -> None:
    def study(runner_up: float) -> tuple[object, list[dict]]:  # type: ignore[type-arg]
        opt = make_optimizer("tba-tpe", SPACE, 3, budget=15)
        rng = np.random.default_rng(1)
        configs = [SPACE.sample(rng) for _ in range(14)]
        for i, c in enumerate(configs):
            opt.tell(c, Outcome("ok", {0: 100.0, 1: runner_up}.get(i, 10.0)))
        return opt, configs

    opt, configs = study(runner_up=95.0)
    proposal = opt.ask()  # type: ignore[attr-defined]
    assert (proposal.phase, proposal.params) == ("confirm", configs[0])
    opt.tell(configs[0], Outcome("ok", 80.0))  # type: ignore[attr-defined]
    proposal = opt.ask()  # type: ignore[attr-defined]  # a budget extended on resume: the new leader (95 > 90)
    assert (proposal.phase, proposal.params) == ("confirm", configs[1])
    opt.tell(configs[1], Outcome("ok", 70.0))  # type: ignore[attr-defined]
    assert opt.ask().phase == "tpe"  # type: ignore[attr-defined]  # the leader (mean 90) was measured twice
    opt, _ = study(runner_up=85.0)  # a clear lead is not worth a trial
    assert opt.ask().phase == "tpe"  # type: ignore[attr-defined]


def test_constrained_bo_learns_the_crash_boundary_and_exploits() -> None:
    """Crash below gmu 0.8 (57 % of the range), utility = max_num_seqs: after its 5 random starts the GPs
    should steer clear of crashes and toward large max_num_seqs, far better than random does."""
    def late(name: str) -> tuple[float, float]:
        opt = make_optimizer(name, SPACE, 7)
        picks = []
        for _ in range(16):
            p = opt.ask().params
            crashed = p["gpu_memory_utilization"] < 0.8
            opt.tell(p, Outcome("crash" if crashed else "ok", None if crashed else float(p["max_num_seqs"])))
            picks.append(p)
        tail = picks[8:]
        return (sum(p["gpu_memory_utilization"] < 0.8 for p in tail) / len(tail),
                sum(p["max_num_seqs"] for p in tail) / len(tail))
    bo_crash, bo_seqs = late("constrained-bo")
    rnd_crash, rnd_seqs = late("random")
    assert bo_crash <= 0.25 < rnd_crash
    assert bo_seqs > 64 and bo_seqs > 1.3 * rnd_seqs


def test_constrained_bo_without_botorch_is_a_clear_error() -> None:
    import subprocess
    import sys

    code = ("import sys; sys.modules['botorch'] = None\n"
            "from sloguard_lib.optimizers import make_optimizer\n"
            "from sloguard_lib.study.space import build_serving_space\n"
            "make_optimizer('constrained-bo', build_serving_space(), 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode != 0 and "needs botorch: pip install 'sloguard[bo]'" in done.stderr


def test_tba_probes_the_flags_of_its_best_miss_until_a_config_meets_the_slo() -> None:
    """Every miss so far ran eager: annealing and the density ratio would stay there; a probe flips it."""
    tba = TBA(SPACE, seed=0, n_init=2)
    numeric = {"quantization": "fp16", "max_num_seqs": 32, "max_num_batched_tokens": 1024,
               "gpu_memory_utilization": 0.9, "max_model_len": 2048}
    best = numeric | {"enforce_eager": True, "enable_prefix_caching": False}
    tba.tell(best, Outcome("slo_violation", 60.0))
    tba.tell(numeric | {"enforce_eager": True, "enable_prefix_caching": True, "max_num_seqs": 8},
             Outcome("slo_violation", 20.0))
    probes = tba.probes(best, np.random.default_rng(0))
    assert probes == [numeric | {"enforce_eager": False, "enable_chunked_prefill": False,
                                 "enable_prefix_caching": False},
                      numeric | {"enforce_eager": False, "enable_chunked_prefill": True,
                                 "enable_prefix_caching": False},
                      numeric | {"enforce_eager": True, "enable_prefix_caching": True}]
    asked = []
    for _ in range(3):
        proposal = tba.ask()
        assert proposal.phase == "tba-probe"
        SPACE.validate(proposal.params)
        asked.append(proposal.params)
        tba.tell(proposal.params, Outcome("slo_violation", 10.0))
    assert asked == probes
    tba.tell(probes[1] | {"max_num_seqs": 40}, Outcome("ok", 90.0))  # feasible: back to annealing
    assert tba.ask().phase != "tba-probe"


def test_optimizer_benchmark_scores_runs_against_the_landscape(tmp_path: Path) -> None:
    """A miniature of the acceptance command: the table, the CSV and the figures, with consistent scores."""
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "optimizers.py"), "--seeds", "3", "--budget", "6",
         "--landscape", "40", "--optimizers", "random", "tba-tpe", "--scenarios", "llama8b-l4-crashy",
         "--load-scale", "2", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=root)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "64 requests per load" in done.stdout  # the scenario's 32, scaled
    assert re.search(r"^\| tba-tpe \| [\d.]+ ± [\d.]+ \| \d+% \| \d+% \|", done.stdout, flags=re.M), done.stdout
    df = pd.read_csv(tmp_path / "results" / "benchmarks" / "optimizers_b6_x2.csv")
    assert len(df) == 6 and set(df.optimizer) == {"random", "tba-tpe"}
    assert df.final_best_pct.between(0, 100).all()  # the landscape best includes every launched config
    assert (df.found_95 | ~df.reached_95).all()  # recommending a config within 5 % means one was launched
    assert (tmp_path / "figures" / "benchmarks" / "anytime_b6_x2.png").stat().st_size > 10_000


def _drive_parallel(name: str, seed: int, n: int,
                    workers: int = 3) -> tuple[list[dict], list[str]]:  # type: ignore[type-arg]
    """Keep ``workers`` proposals in flight; the oldest finishes first except every third, which overtakes it."""
    opt = make_optimizer(name, SPACE, seed)
    asked: list[dict] = []  # type: ignore[type-arg]
    phases: list[str] = []
    in_flight: list[dict] = []  # type: ignore[type-arg]
    while len(asked) < n or in_flight:
        while len(in_flight) < workers and len(asked) < n:
            proposal = opt.ask(pending=list(in_flight))
            SPACE.validate(proposal.params)
            asked.append(proposal.params)
            phases.append(proposal.phase)
            in_flight.append(proposal.params)
        done = in_flight.pop(-1 if len(asked) % 3 == 0 and len(in_flight) > 1 else 0)
        opt.tell(done, _outcome(done))
    return asked, phases


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_parallel_asks_never_repeat_a_running_config_and_are_deterministic(name: str) -> None:
    asked, phases = _drive_parallel(name, 7, 14)
    assert _drive_parallel(name, 7, 14)[0] == asked
    keys = [config_key(p) for p, phase in zip(asked, phases, strict=True) if phase != "confirm"]
    assert len(set(keys)) == len(keys), "a config was proposed twice"


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_a_replayed_optimizer_asks_with_pending_as_the_live_one_does(name: str) -> None:
    """Resume with trials in flight: told history in tell order, the in-flight configs as pending."""
    live = make_optimizer(name, SPACE, 11)
    told: list[dict] = []  # type: ignore[type-arg]
    in_flight = [live.ask().params]
    in_flight.append(live.ask(pending=in_flight).params)
    for _ in range(7):
        done = in_flight.pop(0)
        live.tell(done, _outcome(done))
        told.append(done)
        in_flight.append(live.ask(pending=list(in_flight)).params)
    fresh = make_optimizer(name, SPACE, 11)
    for params in told:
        fresh.tell(params, _outcome(params))
    assert fresh.ask(pending=list(in_flight)).params == live.ask(pending=list(in_flight)).params
