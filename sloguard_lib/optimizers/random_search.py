"""Uniform random search: the baseline every other optimizer must beat."""

from __future__ import annotations

import numpy as np

from ..space import Config, SearchSpace
from .base import Outcome, Proposal


class RandomSearch:
    """Trial *n* draws from a generator seeded by (seed, n): independent of history, so resume is exact."""

    name = "random"

    def __init__(self, space: SearchSpace, seed: int) -> None:
        self.space, self.seed = space, seed
        self.n_told = 0

    def ask(self) -> Proposal:
        return Proposal(self.space.sample(np.random.default_rng((self.seed, self.n_told))), phase="random")

    def tell(self, params: Config, outcome: Outcome) -> None:
        self.n_told += 1
