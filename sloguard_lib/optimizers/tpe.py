"""Optuna TPE, cold start and crash-blind: the baseline an Optuna user gets out of the box.

Crashes are told as ``TrialState.FAIL`` (TPE then ignores them), SLO misses as their penalised utility.
The conditional knob is handled by define-by-run suggestion plus TPE's ``group`` decomposition. The
sampler is re-seeded from (seed, trial number) before every ask, so the next proposal is a function of the
told history alone and a replayed (resumed) study continues exactly as the uninterrupted one. Pending configs
(trials in flight) are RUNNING trials of the study and the sampler's constant liar counts them as bad, so
parallel asks spread out (the sampler is built without the liar when nothing is pending, as before).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState

from sloguard_lib.optimizers.base import Outcome, Proposal
from sloguard_lib.study.space import Config, Knob, SearchSpace, config_key

optuna.logging.set_verbosity(optuna.logging.WARNING)


def distribution(knob: Knob) -> BaseDistribution:
    if knob.kind in ("bool", "categorical"):
        return CategoricalDistribution(knob.values)
    assert knob.low is not None and knob.high is not None
    if knob.kind == "int":
        return IntDistribution(int(knob.low), int(knob.high), log=knob.log)
    return FloatDistribution(float(knob.low), float(knob.high), log=knob.log, step=None if knob.log else knob.step)


class TPE:
    name = "tpe"

    def __init__(self, space: SearchSpace, seed: int, *, n_startup_trials: int = 5) -> None:
        self.space, self.seed, self.n_startup_trials = space, seed, n_startup_trials
        self.study = optuna.create_study(direction="maximize", sampler=self._sampler(0))
        self.dists = {k.name: distribution(k) for k in space.knobs}
        self._pending: dict[str, optuna.trial.Trial] = {}  # asked, not yet told: RUNNING trials of the study

    def _sampler(self, n: int, constant_liar: bool = False) -> optuna.samplers.BaseSampler:
        with warnings.catch_warnings():  # `group` is marked experimental; it is what conditional spaces need
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=(self.seed * 100_003 + n) % 2**32,
                                              n_startup_trials=self.n_startup_trials, multivariate=True, group=True,
                                              constant_liar=constant_liar)

    def ask(self, pending: Sequence[Config] = ()) -> Proposal:
        for running in pending:  # in flight but not asked here (a resumed study, TBA-TPE's rebuilt one)
            if config_key(running) not in self._pending:
                self.study.add_trial(optuna.trial.create_trial(
                    params={n: optuna_float(self.dists[n], v) for n, v in running.items()},
                    distributions={n: self.dists[n] for n in running}, state=TrialState.RUNNING))
                self._pending[config_key(running)] = optuna.trial.Trial(self.study, self.study.trials[-1]._trial_id)
        self.study.sampler = self._sampler(len(self.study.trials), constant_liar=bool(pending))
        trial = self.study.ask()
        params: Config = {}
        for k in self.space.knobs:
            if self.space.is_active(k, params):
                params[k.name] = _suggest(trial, k)
        self._pending[config_key(params)] = trial
        phase = "startup" if len(self.study.trials) <= self.n_startup_trials else "tpe"
        return Proposal(params, phase=phase)

    def _result(self, outcome: Outcome) -> tuple[TrialState, float | None, dict[str, float] | None]:
        """(state, value, constraints) to record: crashes are failures that TPE ignores."""
        if outcome.failed:
            return TrialState.FAIL, None, None
        return TrialState.COMPLETE, outcome.utility, None

    def tell(self, params: Config, outcome: Outcome) -> None:
        state, value, constraints = self._result(outcome)
        trial = self._pending.pop(config_key(params), None)
        if trial is not None:
            for key, c in (constraints or {}).items():
                trial.set_constraint(key, c)
            self.study.tell(trial, value, state=state)
            return
        # replayed from a log (or warm-started): add it as a finished trial with the same distributions, holding
        # the very floats a live trial holds, so a resumed study goes on exactly as the uninterrupted one
        self.study.add_trial(optuna.trial.create_trial(
            params={n: optuna_float(self.dists[n], v) for n, v in params.items()},
            distributions={n: self.dists[n] for n in params}, value=value, state=state, constraints=constraints))


class ConstrainedTPE(TPE):
    """Optuna's own constraint handling (``Trial.set_constraint``, formerly ``constraints_func``): what an
    Optuna user tries first.

    Crashes are told as completed trials with utility 0 and a violated constraint (FAIL trials would be
    invisible to the constraint model); SLO misses keep their penalised utility with a smaller violation.
    """

    name = "tpe-constrained"
    VIOLATION: ClassVar[dict[str, float]] = {"ok": -1.0, "slo_violation": 0.5, "crash": 1.0, "error": 1.0}

    def _result(self, outcome: Outcome) -> tuple[TrialState, float | None, dict[str, float] | None]:
        value = 0.0 if outcome.utility is None else outcome.utility
        return TrialState.COMPLETE, value, {"crash_or_slo": self.VIOLATION[outcome.status]}


def optuna_float(dist: BaseDistribution, value: object) -> object:
    """The float Optuna holds for a stepped value: its own arithmetic (``optuna._transform``: ``round((x - low) /
    step) * step + low``, clipped), so ``0.89`` on the grid 0.5:0.95:0.01 becomes the 0.8899999999999999 a live
    trial holds. Without it a replayed trial told TPE 0.89 and resumed studies drifted from the uninterrupted run
    (issue #24 F3: from trial 17 at budget 50, at every resume point tried at budget 200)."""
    if isinstance(dist, FloatDistribution) and dist.step is not None and not dist.log and isinstance(value, float):
        n = np.round((value - dist.low) / dist.step)
        return float(np.clip(n * dist.step + dist.low, dist.low, dist.high))
    return value


def _suggest(trial: optuna.trial.Trial, knob: Knob) -> object:
    if knob.kind in ("bool", "categorical"):
        return trial.suggest_categorical(knob.name, knob.values)
    assert knob.low is not None and knob.high is not None
    if knob.kind == "int":
        return trial.suggest_int(knob.name, int(knob.low), int(knob.high), log=knob.log)
    step = None if knob.log else knob.step
    value = trial.suggest_float(knob.name, float(knob.low), float(knob.high), log=knob.log, step=step)
    return knob.cast(value)  # Optuna's stepped floats carry binary noise (0.6599999999999999)
