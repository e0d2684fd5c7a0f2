"""Optimizers behind one ask/tell protocol, chosen by name."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sloguard_lib.errors import InputError
from sloguard_lib.optimizers.base import Optimizer, Outcome, Proposal
from sloguard_lib.study.space import SearchSpace

if TYPE_CHECKING:
    from sloguard_lib.optimizers.guard import Prior

#: name -> "module:Class"; imported on use, so a CLI run never pays for libraries it does not need
OPTIMIZERS: dict[str, str] = {
    "random": "random_search:RandomSearch",
    "tpe": "tpe:TPE",
    "tpe-constrained": "tpe:ConstrainedTPE",
    "tba": "tba:TBA",
    "tba-tpe": "tba_tpe:TBATPE",
    "constrained-bo": "constrained_bo:ConstrainedBO",  # needs the [bo] extra (botorch)
}
#: the optimizers that use the study's context (budget, memory prior)
CRASH_AWARE = ("tba", "tba-tpe", "constrained-bo")


def make_optimizer(name: str, space: SearchSpace, seed: int, *, budget: int = 15,
                   prior: Prior | None = None) -> Optimizer:
    try:
        module, cls = OPTIMIZERS[name].split(":")
    except KeyError:
        raise InputError(f"unknown optimizer {name!r}; available: {', '.join(OPTIMIZERS)}") from None
    factory: Any = getattr(importlib.import_module(f"{__name__}.{module}"), cls)
    if name in CRASH_AWARE:
        return factory(space, seed, budget=budget, prior=prior)  # type: ignore[no-any-return]
    return factory(space, seed)  # type: ignore[no-any-return]


__all__ = ["OPTIMIZERS", "Optimizer", "Outcome", "Proposal", "make_optimizer"]
