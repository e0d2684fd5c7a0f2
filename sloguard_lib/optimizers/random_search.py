"""Uniform random search: the baseline every other optimizer must beat."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sloguard_lib.optimizers.base import Outcome, Proposal, draw_key
from sloguard_lib.study.space import Config, SearchSpace, config_key


class RandomSearch:
    """Trial *n* draws from a generator seeded by (seed, n): independent of history, so resume is exact. A draw
    that repeats a pending config is drawn again."""

    name = "random"

    def __init__(self, space: SearchSpace, seed: int) -> None:
        self.space, self.seed = space, seed
        self.n_told = 0

    def ask(self, pending: Sequence[Config] = ()) -> Proposal:
        rng = np.random.default_rng((self.seed, *draw_key(self.n_told, pending)))
        running = {config_key(p) for p in pending}
        params = self.space.sample(rng)
        for _ in range(100):
            if config_key(params) not in running:
                break
            params = self.space.sample(rng)
        return Proposal(params, phase="random")

    def tell(self, params: Config, outcome: Outcome) -> None:
        self.n_told += 1
