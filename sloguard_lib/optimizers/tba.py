"""TBA: crash-aware simulated annealing over the mixed, conditional serving space.

Each ``ask`` draws a batch of candidates: space-filling random samples for the first ``n_init`` trials,
then neighbours of the annealing state and of the best trial plus a quarter of global samples
(log-scale steps for log knobs, Gaussian steps for floats, flips, re-draws for categoricals; the step
size shrinks with the temperature). It discards every candidate the :class:`~.guard.CrashGuard`
rejects (memory prior, learned blacklist, OOB-gated forest) or that was already tried. Among the
survivors it usually picks the one a TPE-style density ratio l(x)/g(x) over the non-crashed trials likes
best (good = top third by utility), so moves inside the feasible region follow what has worked; a
temperature-scaled share of moves (at least ``min_explore``) instead takes the candidate farthest from
everything tried, so a mode seen first cannot trap the search. While no trial has met the SLO, moves
after the space-filling start are first *discrete probes* of the best trial, until they are used up: the
same config with one boolean or categorical knob changed (a newly active child flag tried at each value).
Single-knob moves and the density ratio cannot see that a miss is caused by, say, eager mode when every
near-miss so far was eager; and a feasible region that needs two flags at once (CUDA graphs *and* chunked
prefill for long prompts) is one probe away.
``tell`` applies the Metropolis rule to move the annealing state and cools the temperature; a crash never
becomes the state.

Everything random is seeded from (seed, trial number), and the state is a function of the told history,
so a replayed study continues exactly like the uninterrupted one. Pending configs (trials in flight) count as
tried: never proposed again, and the space-filling moves keep away from them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from sklearn.neighbors import KernelDensity

from sloguard_lib.optimizers.base import Outcome, Proposal, draw_key
from sloguard_lib.optimizers.guard import CrashGuard, Prior
from sloguard_lib.study.space import Config, Knob, SearchSpace, config_key


class TBA:
    name = "tba"

    def __init__(self, space: SearchSpace, seed: int, *, budget: int = 15, prior: Prior | None = None,
                 n_init: int = 4, t0: float = 1.0, cooling: float = 0.8, n_candidates: int = 48,
                 gamma: float = 0.33, min_explore: float = 0.2) -> None:
        self.space, self.seed, self.budget = space, seed, budget
        self.guard = CrashGuard(space, seed, prior)
        self.n_init, self.cooling, self.n_candidates, self.gamma = n_init, cooling, n_candidates, gamma
        self.min_explore = min_explore
        self.t0 = t0
        self.history: list[tuple[Config, Outcome]] = []
        self.current: Config | None = None
        self.current_u = -math.inf
        self.best: Config | None = None
        self.best_u = -math.inf

    @property
    def temperature(self) -> float:
        return self.t0 * self.cooling ** max(0, len(self.history) - self.n_init)

    # ------------------------------------------------------------------ ask
    def ask(self, pending: Sequence[Config] = ()) -> Proposal:
        n = len(self.history)
        rng = np.random.default_rng((self.seed, *draw_key(n, pending), 1))
        exploring = n < self.n_init or self.current is None
        if exploring:
            candidates = [self.space.sample(rng) for _ in range(self.n_candidates)]
        else:
            assert self.current is not None and self.best is not None
            # half around the annealing state, a quarter around the best, a quarter anywhere: the density
            # ratio below decides, so a far candidate wins when the history says that region is better
            q = self.n_candidates // 4
            candidates = ([self.neighbour(self.current, rng) for _ in range(2 * q)]
                          + [self.neighbour(self.best, rng) for _ in range(q)]
                          + [self.space.sample(rng) for _ in range(self.n_candidates - 3 * q)])
        tried = {config_key(p) for p in (*(p for p, _ in self.history), *pending)}
        allowed = [c for c in candidates if config_key(c) not in tried and self.guard.allows(c)]
        if not allowed:  # the neighbourhood is exhausted or all predicted to crash: jump anywhere allowed
            samples = (self.space.sample(rng) for _ in range(400))
            allowed = [c for c in samples if config_key(c) not in tried and self.guard.allows(c)][:self.n_candidates]
            exploring = True
        if not allowed:
            return Proposal(candidates[0], phase="tba-forced")
        if not exploring and not any(o.status == "ok" for _, o in self.history):
            assert self.best is not None
            fresh = (c for c in self.probes(self.best, rng) if config_key(c) not in tried and self.guard.allows(c))
            probe = next(fresh, None)
            if probe is not None:
                return Proposal(probe, phase="tba-probe")
        # the density ratio alone never leaves a mode it has only ever seen (every good trial eager, say):
        # a temperature-scaled share of the moves goes to the least-explored allowed candidate instead
        exploring = exploring or rng.random() < max(self.min_explore, 0.5 * self.temperature)
        pick = self._most_spread(allowed, pending) if exploring else self._most_promising(allowed, rng)
        return Proposal(pick, phase="tba-explore" if exploring else "tba-anneal")

    def neighbour(self, params: Config, rng: np.random.Generator) -> Config:
        """Mutate one knob (two when hot), then repair conditionality in knob order."""
        active = [k for k in self.space.knobs if k.name in params and _mutable(k)]
        n_moves = 2 if rng.random() < self.temperature * 0.5 else 1
        chosen = {active[int(i)].name for i in rng.choice(len(active), size=min(n_moves, len(active)), replace=False)}
        scale = 0.08 + 0.25 * self.temperature
        out: Config = {}
        for k in self.space.knobs:
            if not self.space.is_active(k, out):
                continue
            if k.name not in params:
                out[k.name] = k.sample(rng)  # newly active child knob
            elif k.name in chosen:
                out[k.name] = _step(k, params[k.name], scale, rng)
            else:
                out[k.name] = params[k.name]
        return out

    def probes(self, params: Config, rng: np.random.Generator) -> list[Config]:
        """``params`` with one boolean/categorical knob changed, in knob order."""
        return [probe for knob in self.space.knobs if knob.name in params and knob.kind in ("bool", "categorical")
                for value in knob.values if value != params[knob.name]
                for probe in self._completions(params | {knob.name: value}, rng)]

    def _completions(self, fixed: Config, rng: np.random.Generator) -> list[Config]:
        """The active configs that keep ``fixed``'s values: a child knob that becomes active is enumerated if
        discrete, sampled if numeric; one that becomes inactive is dropped."""
        partial: list[Config] = [{}]
        for k in self.space.knobs:
            grown: list[Config] = []
            for c in partial:
                if not self.space.is_active(k, c):
                    grown.append(c)
                elif k.name in fixed:
                    grown.append(c | {k.name: fixed[k.name]})
                elif k.kind in ("bool", "categorical"):
                    grown += [c | {k.name: v} for v in k.values]
                else:
                    grown.append(c | {k.name: k.sample(rng)})
            partial = grown
        return partial

    def _most_spread(self, candidates: list[Config], pending: Sequence[Config] = ()) -> Config:
        """Space-filling: the candidate farthest from everything tried or running so far."""
        if not self.history and not pending:
            return candidates[0]
        seen = np.stack([self.space.encode(p) for p in (*(p for p, _ in self.history), *pending)])
        dists = [float(np.min(np.linalg.norm(seen - self.space.encode(c), axis=1))) for c in candidates]
        return candidates[int(np.argmax(dists))]

    def _most_promising(self, candidates: list[Config], rng: np.random.Generator) -> Config:
        """TPE-style choice: maximise log l(x) - log g(x) over the non-crashed trials."""
        scored = sorted(((o.utility, p) for p, o in self.history if o.utility is not None),
                        key=lambda t: t[0], reverse=True)
        if len(scored) < 3:
            return candidates[int(rng.integers(len(candidates)))]
        n_good = max(1, round(self.gamma * len(scored)))
        x = np.stack([self.space.encode(c) for c in candidates])
        good = np.stack([self.space.encode(p) for _, p in scored[:n_good]])
        bad = np.stack([self.space.encode(p) for _, p in scored[n_good:]])
        bandwidth = 0.1 + 0.15 * self.temperature
        score = KernelDensity(bandwidth=bandwidth).fit(good).score_samples(x)
        if len(bad):
            score = score - KernelDensity(bandwidth=bandwidth).fit(bad).score_samples(x)
        return candidates[int(np.argmax(score))]

    # ------------------------------------------------------------------ tell
    def tell(self, params: Config, outcome: Outcome) -> None:
        n = len(self.history)
        self.history.append((dict(params), outcome))
        self.guard.observe(params, crashed=outcome.failed)
        if outcome.utility is None:
            return
        u = outcome.utility
        if u > self.best_u:
            self.best, self.best_u = dict(params), u
        rng = np.random.default_rng((self.seed, n, 2))
        if self.current is None or u >= self.current_u:
            accept = True
        else:  # Metropolis on the utility relative to the best seen
            delta = (u - self.current_u) / max(abs(self.best_u), 1e-9)
            accept = rng.random() < math.exp(delta / max(0.05 * self.temperature, 1e-6))
        if accept:
            self.current, self.current_u = dict(params), u


def _mutable(k: Knob) -> bool:
    return k.kind in ("bool", "int", "float") or (k.kind == "categorical" and len(k.choices) > 1)


def _step(k: Knob, value: object, scale: float, rng: np.random.Generator) -> object:
    if k.kind == "bool":
        return not value
    if k.kind == "categorical":
        others = [c for c in k.choices if c != value]
        return others[int(rng.integers(len(others)))]
    assert k.low is not None and k.high is not None and isinstance(value, int | float)
    if k.log:
        lo, hi = math.log(k.low), math.log(k.high)
        raw = math.exp(min(hi, max(lo, math.log(value) + rng.normal(0, scale * (hi - lo)))))
    else:
        raw = value + rng.normal(0, scale * (k.high - k.low))
    new = k.cast(raw)
    if new == value and k.kind == "int":  # a zero step wastes a trial: nudge by one grid point
        new = k.cast(value + (1 if rng.random() < 0.5 else -1))
    return new
