"""Optimizers behind one ask/tell protocol, chosen by name."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import InputError
from ..space import SearchSpace
from .base import Optimizer, Outcome, Proposal
from .random_search import RandomSearch
from .tpe import TPE

OPTIMIZERS: dict[str, Callable[[SearchSpace, int], Optimizer]] = {
    "random": RandomSearch,
    "tpe": TPE,
}


def make_optimizer(name: str, space: SearchSpace, seed: int) -> Optimizer:
    try:
        factory = OPTIMIZERS[name]
    except KeyError:
        raise InputError(f"unknown optimizer {name!r}; available: {', '.join(OPTIMIZERS)}") from None
    return factory(space, seed)


__all__ = ["OPTIMIZERS", "Optimizer", "Outcome", "Proposal", "make_optimizer"]
