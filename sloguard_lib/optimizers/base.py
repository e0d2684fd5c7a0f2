"""The ask/tell protocol shared by every optimizer.

``ask()`` returns a :class:`Proposal` (params over the *active* knobs + the optimizer's phase).
``tell(params, outcome)`` reports what happened; resume calls ``tell`` for every logged trial on a fresh
optimizer without a preceding ``ask``, so an optimizer must accept told params it never proposed, and
its next ``ask`` must depend only on (seed, told history) -- that makes a resumed study propose exactly
what the uninterrupted one would have.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

from ..space import Config, SearchSpace

OutcomeStatus = Literal["ok", "slo_violation", "crash", "error"]


@dataclass(frozen=True)
class Proposal:
    params: Config
    phase: str = "main"


@dataclass(frozen=True)
class Outcome:
    """``utility`` is None for crashes/errors: they are failures, never a zero score."""

    status: OutcomeStatus
    utility: float | None
    crash_class: str | None = None
    metrics: dict[str, Any] | None = None
    slo_usage: dict[str, float] | None = None  # observed p99 / SLO threshold, per SLO metric

    @property
    def failed(self) -> bool:
        return self.utility is None


class Optimizer(Protocol):
    name: str
    space: SearchSpace

    def ask(self) -> Proposal: ...

    def tell(self, params: Config, outcome: Outcome) -> None: ...
