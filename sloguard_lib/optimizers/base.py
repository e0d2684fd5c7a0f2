"""The ask/tell protocol shared by every optimizer.

``ask()`` returns a :class:`Proposal` (params over the *active* knobs + the optimizer's phase).
``tell(params, outcome)`` reports what happened; resume calls ``tell`` for every logged trial on a fresh
optimizer without a preceding ``ask``, so an optimizer must accept told params it never proposed, and
its next ``ask`` must depend only on (seed, told history, pending) -- that makes a resumed study propose
exactly what the uninterrupted one would have.

``ask(pending)``: the configs proposed and still running (parallel trials, :mod:`sloguard_lib.study.workers`).
An optimizer must not propose one of them again, and should spread away from them (Optuna's constant liar for
TPE, pending excluded from TBA's candidates and distances, a kriging believer in the BO acquisition). With no
pending config every optimizer proposes exactly what it did before pending existed, so older logs resume.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from sloguard_lib.study.space import Config, SearchSpace

OutcomeStatus = Literal["ok", "slo_violation", "crash", "error"]


@dataclass(frozen=True)
class Proposal:
    params: Config
    phase: str = "main"
    screen: dict[str, Any] | None = None  # what a sim screen predicted for it (:mod:`sloguard_lib.study.screen`)


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

    def ask(self, pending: Sequence[Config] = ()) -> Proposal: ...

    def tell(self, params: Config, outcome: Outcome) -> None: ...


def draw_key(n_told: int, pending: Sequence[Config]) -> tuple[int, ...]:
    """The part of an ask's random seed that names the optimizer's state: ``(n_told,)`` sequentially, as before
    pending existed, and ``(n_told, len(pending))`` with trials in flight. No two asks of one study share a key:
    every ask adds one pending trial and every tell turns one into a told one, so an ask's ``n_told + len(pending)``
    is the number of asks before it."""
    return (n_told, len(pending)) if pending else (n_told,)
