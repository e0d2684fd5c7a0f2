"""TBA-TPE: TBA maps the feasible region, then a warm-started Optuna TPE exploits inside it.

Phase 1 runs :class:`~.tba.TBA` until ``switch_after`` trials (default: 40 % of the budget, at least 5)
*and* ``min_feasible`` non-crashed trials exist (or twice ``switch_after`` trials, whichever is first).
Phase 2 runs an Optuna TPE study warm-started with every trial so far (``add_trial`` with the space's
distributions; SLO misses carry their penalised utility, so TPE also learns where the SLO boundary is;
crashes are failed trials) and exploits with no random start-up. TBA's crash guard stays on: a TPE proposal it rejects
is told to TPE as a failure and TPE is asked again, so phase 2 never launches a config the guard expects
to crash. Each record's ``phase`` says which phase proposed it.

Three proposals come from what the engine and the measurement are known to do, not from the history's shape:

* **Step-budget probe** (phase ``step-probe``), the first phase-2 proposal when the best trial (the best that
  met the SLO, else the best miss) is closer to its ITL SLO than to its TTFT SLO: that config with chunked
  prefill on and the smallest ``max_num_batched_tokens``. A whole-prompt prefill stalls every running decode
  for its full length, which is what an ITL p99 measures; vLLM's tuning guide names a small token budget as the
  cure. The budget's good values can sit in a narrow band below a cliff (3,000-token prompts on an A100:
  800-960 tokens; 1,000 misses a 120 ms ITL), which TPE, seeing mostly unchunked trials, rarely proposes.
* **Step fit** (phase ``step-fit``), the next proposal: the best chunked config that met the SLO, at the budget
  where its ITL p99 is predicted at ``itl_target`` (90 %) of the SLO. The smallest budget meets the ITL SLO but
  splits each prompt into more steps, so TTFT nears its own SLO and more requests miss it (on the A100 above,
  512 tokens deliver 11 % less goodput than the band); the band's top is where ITL still has a margin.
* **Confirmation** (phase ``confirm``), the last trial: when the best config has been measured once and the
  runner-up is within ``confirm_margin`` of it, the best is measured again. One load's goodput varies by
  5-20 % with its seed, so the best single measurement is often a lucky draw of a worse config; the study's
  recommendation (:func:`~sloguard_lib.study.incumbent.incumbent`) averages a config's measurements.
"""

from __future__ import annotations

from collections.abc import Sequence

from sloguard_lib.errors import InputError
from sloguard_lib.optimizers.base import Outcome, Proposal
from sloguard_lib.optimizers.guard import Prior
from sloguard_lib.optimizers.tba import TBA
from sloguard_lib.optimizers.tpe import TPE
from sloguard_lib.study.incumbent import ranked
from sloguard_lib.study.space import Config, SearchSpace, config_key

MAX_REJECTIONS = 16
MIN_STEP_GROWTH = 1.25  # a smaller budget change moves goodput less than one load's noise: not worth a trial


class TBATPE:
    name = "tba-tpe"

    def __init__(self, space: SearchSpace, seed: int, *, budget: int = 15, prior: Prior | None = None,
                 switch_after: int | None = None, min_feasible: int = 3, confirm_margin: float = 0.1,
                 itl_target: float = 0.9) -> None:
        self.space, self.seed, self.budget, self.confirm_margin = space, seed, budget, confirm_margin
        self.itl_target = itl_target
        # the step moves' knob; a space without it (pinned on the command line) gets neither move
        self.step_budget = space.knob("max_num_batched_tokens") if "max_num_batched_tokens" in space.names else None
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

    def ask(self, pending: Sequence[Config] = ()) -> Proposal:
        if self.switched_at is None:
            return self.tba.ask(pending)
        n = len(self.tba.history)
        if n == self.switched_at and (probe := self._step_probe(pending)) is not None:
            return Proposal(probe, phase="step-probe")
        if n == self.switched_at + 1 and (fit := self._step_fit(pending)) is not None:
            return Proposal(fit, phase="step-fit")
        running = {config_key(self.space.finalize(p)) for p in pending}
        if n + len(pending) >= self.budget - 1 and (again := self._to_confirm()) is not None \
                and config_key(self.space.finalize(again)) not in running:
            return Proposal(again, phase="confirm")
        tpe = self._phase2_study()
        proposal = tpe.ask(pending)
        for _ in range(MAX_REJECTIONS):
            if self.tba.guard.allows(proposal.params):
                break
            tpe.tell(proposal.params, Outcome("crash", None))  # vetoed: TPE moves elsewhere
            proposal = tpe.ask(pending)
        return Proposal(proposal.params, phase="tpe")

    def _step_probe(self, pending: Sequence[Config]) -> Config | None:
        measured = [(p, o) for p, o in self.tba.history if o.utility is not None]
        if not measured or self.step_budget is None:
            return None
        best, outcome = max([t for t in measured if t[1].status == "ok"] or measured, key=lambda t: t[1].utility or 0.0)
        usage = outcome.slo_usage or {}
        itl = usage.get("itl_p99_ms")
        if itl is None or itl < usage.get("ttft_p99_ms", 0.0):  # TTFT binds: a smaller budget only queues prompts
            return None
        budget = self.step_budget
        return self._untried(best | {"enforce_eager": False, "enable_chunked_prefill": True,
                                     "max_num_batched_tokens": budget.cast(budget.low or 0)}, pending)

    def _step_fit(self, pending: Sequence[Config]) -> Config | None:
        """The best chunked config that met the SLO, at the budget whose ITL p99 is predicted at ``itl_target``.

        A decode step's time grows about linearly with the tokens scheduled in it and a prefill chunk fills the
        budget, so ITL p99 scales with the budget; the fit goes through the origin from the one measurement
        (it overestimates the budget slightly, the constant part of a step, which the target's margin absorbs).
        Only when the new budget is at least ``MIN_STEP_GROWTH`` times the old: the probe's smallest budget
        usually is, a config TPE has already pushed near the target is not.
        """
        chunked = [(p, o) for p, o in self.tba.history if o.status == "ok" and p.get("enable_chunked_prefill")]
        if not chunked or self.step_budget is None:
            return None
        anchor, outcome = max(chunked, key=lambda t: t[1].utility or 0.0)
        itl = (outcome.slo_usage or {}).get("itl_p99_ms")
        if not itl or self.itl_target / itl < MIN_STEP_GROWTH:  # little room to grow the budget under the ITL SLO
            return None
        return self._untried(anchor | {"max_num_batched_tokens": self.step_budget.cast(
            anchor["max_num_batched_tokens"] * self.itl_target / itl)}, pending)

    def _untried(self, config: Config, pending: Sequence[Config]) -> Config | None:
        """``config`` if it is valid in this space, not launched before (or running) and not expected to crash."""
        try:
            self.space.validate(config)
        except InputError:  # the space pins eager mode or lacks one of these knobs
            return None
        tried = {config_key(self.space.finalize(p)) for p in (*(p for p, _ in self.tba.history), *pending)}
        return config if config_key(config) not in tried and self.tba.guard.allows(config) else None

    def _to_confirm(self) -> Config | None:
        """The recommended config, when it was measured once and the runner-up is within the margin."""
        configs = ranked([{"params": p, "config": self.space.finalize(p), "status": o.status, "utility": o.utility}
                          for p, o in self.tba.history])
        if len(configs) < 2 or len(configs[0][1]) > 1:
            return None
        (u_best, (best,)), (u_next, _) = configs[0], configs[1]
        return dict(best["params"]) if u_next >= (1 - self.confirm_margin) * u_best else None

    def tell(self, params: Config, outcome: Outcome) -> None:
        self.tba.tell(params, outcome)
        self._check_switch()
