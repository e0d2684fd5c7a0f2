"""Crash awareness shared by the crash-aware optimizers: three filters a proposal must pass.

1. **Memory prior** (analytic, from :mod:`sloguard_lib.hardware`): configs whose KV cache cannot hold one
   ``max_model_len`` sequence even under an optimistic memory estimate are never launched.
2. **Subspace blacklist** (learned): a region is blacklisted once >= ``min_crashes`` trials crashed in it
   and none succeeded there. Regions are one-knob half-lines (``gpu_memory_utilization <= 0.71``: every
   trial at or below crashed) and categorical/boolean values, and pairs of them. Bounds stop at the
   observed crashes, never extrapolating past them.
3. **Feasibility forest** (learned): a scikit-learn random forest on encoded configs predicts the crash
   probability. It is *OOB-gated*: trusted only with both classes present, enough samples and an
   out-of-bag accuracy above ``oob_threshold``, so an early, overconfident forest cannot veto the
   region the optimizer most needs to explore.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.ensemble import RandomForestClassifier

from sloguard_lib.study.space import Config, SearchSpace

Prior = Callable[[Config], bool]  # True when the config can fit in memory at all


@dataclass(frozen=True)
class Rule:
    """``knob <= bound`` / ``knob >= bound`` (numeric) or ``knob == value`` (categorical/bool)."""

    knob: str
    op: str
    value: Any

    def matches(self, params: Config) -> bool:
        if self.knob not in params:
            return False
        v = params[self.knob]
        if self.op == "<=":
            return bool(v <= self.value)
        if self.op == ">=":
            return bool(v >= self.value)
        return bool(v == self.value)

    def __str__(self) -> str:
        return f"{self.knob} {self.op} {self.value}"


@dataclass
class CrashGuard:
    space: SearchSpace
    seed: int
    prior: Prior | None = None
    min_crashes: int = 2
    min_samples: int = 6
    oob_threshold: float = 0.7
    max_crash_prob: float = 0.5
    history: list[tuple[Config, bool]] = field(default_factory=list)  # (params, crashed)
    blacklist: list[tuple[Rule, ...]] = field(default_factory=list)
    _forest: RandomForestClassifier | None = None
    oob_score: float | None = None

    def observe(self, params: Config, crashed: bool) -> None:
        self.history.append((dict(params), crashed))
        self.blacklist = self._learn_blacklist()
        self._fit_forest()

    # ------------------------------------------------------------------ filters
    def allows(self, params: Config) -> bool:
        if self.prior is not None and not self.prior(self.space.finalize(params)):
            return False
        if any(all(rule.matches(params) for rule in box) for box in self.blacklist):
            return False
        return self.crash_probability(params) <= self.max_crash_prob

    def crash_probability(self, params: Config) -> float:
        """The trusted forest's estimate, or 0 when the forest is not trusted (yet)."""
        if self._forest is None:
            return 0.0
        proba = self._forest.predict_proba(self.space.encode(params)[None, :])[0]
        classes = list(self._forest.classes_)
        return float(proba[classes.index(True)]) if True in classes else 0.0

    # ------------------------------------------------------------------ learning
    def _learn_blacklist(self) -> list[tuple[Rule, ...]]:
        crashed = [p for p, c in self.history if c]
        ok = [p for p, c in self.history if not c]
        if len(crashed) < self.min_crashes:
            return []
        singles: list[Rule] = []
        for knob in self.space.knobs:
            if knob.kind in ("int", "float"):
                for op, pick in (("<=", max), (">=", min)):
                    rule = self._half_line(knob.name, op, pick, crashed, ok)
                    if rule:
                        singles.append(rule)
            else:
                for value in {p[knob.name] for p in crashed if knob.name in p}:
                    rule = Rule(knob.name, "==", value)
                    if self._pure_box((rule,), crashed, ok):
                        singles.append(rule)
        boxes: list[tuple[Rule, ...]] = [(r,) for r in singles]
        # pairs of categorical values that only ever crashed together (e.g. eager=False & quantization=fp8)
        cats = [Rule(k.name, "==", v) for k in self.space.knobs if k.kind in ("bool", "categorical")
                for v in {p[k.name] for p in crashed if k.name in p}]
        for i, a in enumerate(cats):
            for b in cats[i + 1:]:
                if a.knob != b.knob and (a,) not in boxes and (b,) not in boxes and self._pure_box((a, b), crashed, ok):
                    boxes.append((a, b))
        return boxes

    def _half_line(self, knob: str, op: str, pick: Callable[..., Any], crashed: list[Config],
                   ok: list[Config]) -> Rule | None:
        """The widest ``knob op bound`` holding >= min_crashes crashes and no success (bound = a crash's value)."""
        ok_vals = [p[knob] for p in ok if knob in p]
        crash_vals = sorted(p[knob] for p in crashed if knob in p)
        if op == "<=":
            limit = min(ok_vals) if ok_vals else float("inf")
            inside = [v for v in crash_vals if v < limit]
        else:
            limit = max(ok_vals) if ok_vals else float("-inf")
            inside = [v for v in crash_vals if v > limit]
        if len(inside) < self.min_crashes or not ok_vals:
            return None  # with no success at all, a half-line would blacklist the whole space
        return Rule(knob, op, pick(inside))

    def _pure_box(self, box: tuple[Rule, ...], crashed: list[Config], ok: list[Config]) -> bool:
        hits = sum(all(r.matches(p) for r in box) for p in crashed)
        return hits >= self.min_crashes and not any(all(r.matches(p) for r in box) for p in ok)

    def _fit_forest(self) -> None:
        labels = [c for _, c in self.history]
        self._forest, self.oob_score = None, None
        if len(labels) < self.min_samples or len(set(labels)) < 2:
            return
        x = np.stack([self.space.encode(p) for p, _ in self.history])
        forest = RandomForestClassifier(n_estimators=64, oob_score=True, random_state=self.seed, min_samples_leaf=1,
                                        n_jobs=1)
        with warnings.catch_warnings():  # tiny samples: sklearn warns that some rows got no OOB estimate
            warnings.simplefilter("ignore")
            forest.fit(x, np.asarray(labels))
        self.oob_score = float(forest.oob_score_)
        if self.oob_score >= self.oob_threshold:
            self._forest = forest
