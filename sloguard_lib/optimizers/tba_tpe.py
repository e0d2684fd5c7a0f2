"""TBA-TPE: TBA maps the feasible region, then a warm-started Optuna TPE exploits inside it.

Phase 1 runs :class:`~.tba.TBA` until ``switch_after`` trials (default: 40 % of the budget, at least 5)
*and* ``min_feasible`` non-crashed trials exist (or twice ``switch_after`` trials, whichever is first).
Phase 2 runs an Optuna TPE study warm-started with every trial so far (``add_trial`` with the space's
distributions; SLO misses carry their penalised utility, so TPE also learns where the SLO boundary is;
crashes are failed trials) and exploits with no random start-up. TBA's crash guard stays on: a TPE proposal it rejects
is told to TPE as a failure and TPE is asked again, so phase 2 never launches a config the guard expects
to crash. Each record's ``phase`` says which phase proposed it.
"""

from __future__ import annotations

from ..space import Config, SearchSpace
from .base import Outcome, Proposal
from .guard import Prior
from .tba import TBA
from .tpe import TPE

MAX_REJECTIONS = 16


class TBATPE:
    name = "tba-tpe"

    def __init__(self, space: SearchSpace, seed: int, *, budget: int = 15, prior: Prior | None = None,
                 switch_after: int | None = None, min_feasible: int = 3) -> None:
        self.space, self.seed = space, seed
        self.tba = TBA(space, seed, budget=budget, prior=prior)
        self.switch_after = switch_after or max(5, round(0.4 * budget))
        self.min_feasible = min_feasible
        self.switched_at: int | None = None

    def _check_switch(self) -> None:
        n = len(self.tba.history)
        feasible = sum(o.status == "ok" for _, o in self.tba.history)
        if self.switched_at is None and (
                n >= 2 * self.switch_after or (n >= self.switch_after and feasible >= self.min_feasible)):
            self.switched_at = n

    def _phase2_study(self) -> TPE:
        """A TPE study rebuilt from the history: phase 2's proposals depend on nothing else, so resume is exact."""
        tpe = TPE(self.space, self.seed + len(self.tba.history), n_startup_trials=0)
        for params, outcome in self.tba.history:
            tpe.tell(params, outcome)
        return tpe

    def ask(self) -> Proposal:
        if self.switched_at is None:
            return self.tba.ask()
        tpe = self._phase2_study()
        proposal = tpe.ask()
        for _ in range(MAX_REJECTIONS):
            if self.tba.guard.allows(proposal.params):
                break
            tpe.tell(proposal.params, Outcome("crash", None))  # vetoed: TPE moves elsewhere
            proposal = tpe.ask()
        return Proposal(proposal.params, phase="tpe")

    def tell(self, params: Config, outcome: Outcome) -> None:
        self.tba.tell(params, outcome)
        self._check_switch()
