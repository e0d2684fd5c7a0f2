"""constrained-bo: Bayesian optimisation with botorch, crashes modelled as a black-box constraint.

Two Gaussian processes (``SingleTaskGP``, ARD Matern kernel) over a mixed encoding of the space: numeric
knobs scaled to [0, 1] (log knobs in log space), booleans as 0/1 (an inactive conditional flag sits at 0.5,
between its values, since it is neither), categoricals one-hot, so no categorical gets a spurious order. Only
configs drawn from the space are ever scored, so the GP never has to round a fractional flag. (botorch's
``MixedSingleTaskGP`` with categorical kernels was 100x slower to fit here, 10-40 s per proposal.)

* the **objective** GP, on log(1 + utility) of every trial that ran a load (feasible goodput, or the
  penalised throughput of an SLO miss, see :mod:`sloguard_lib.measure.slo`), standardised;
* the **constraint** GP, on every trial, regressing +1 (crashed) / -1 (started): its posterior gives
  the probability that a config starts at all (constraint value <= 0), the usual Gardner et al. (2014)
  constraint model.

The acquisition is botorch's analytic ``LogConstrainedExpectedImprovement`` (EI weighted by the
probability of feasibility, in log space for numerical stability), maximised over a seeded random batch of
valid configs drawn from the space itself. Drawing candidates from the space keeps the conditional
structure exact (an inactive knob is never set), and the memory prior removes configs the memory model
says cannot start, as for ``tba``. Until ``n_init`` trials exist it samples (space-filling, seeded); before
any load has run it maximises the probability of starting.

Seeds come from (seed, trial number) and model fitting is deterministic given the data, so a replayed
study proposes what the uninterrupted one would have. Pending configs (trials in flight) are never candidates,
and the objective GP believes each one's posterior mean as if measured (the "kriging believer" of batch BO), so
its variance, and with it EI, drops around them and parallel asks spread out.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from sloguard_lib.errors import InputError
from sloguard_lib.optimizers.base import Outcome, Proposal, draw_key
from sloguard_lib.optimizers.guard import Prior
from sloguard_lib.study.space import Config, SearchSpace, config_key

try:
    import torch
    from botorch.acquisition.analytic import LogConstrainedExpectedImprovement
    from botorch.exceptions.errors import ModelFittingError
    from botorch.fit import fit_gpytorch_mll
    from botorch.models.gp_regression import SingleTaskGP
    from botorch.models.model_list_gp_regression import ModelListGP
    from gpytorch.mlls import ExactMarginalLogLikelihood  # type: ignore[import-untyped]
except ImportError:  # pragma: no cover - exercised by the missing-extra test via a subprocess
    raise InputError("optimizer 'constrained-bo' needs botorch: pip install 'sloguard[bo]' "
                     "(on a CPU machine install the CPU torch wheel first)") from None


#: L-BFGS iterations per hyperparameter fit: the default (~85 used) costs 3x the time for no better proposal
MAX_FIT_ITERS = 30


class ConstrainedBO:
    name = "constrained-bo"

    def __init__(self, space: SearchSpace, seed: int, *, budget: int = 15, prior: Prior | None = None,
                 n_init: int = 5, n_candidates: int = 512) -> None:
        self.space, self.seed, self.budget, self.prior = space, seed, budget, prior
        self.n_init, self.n_candidates = n_init, n_candidates
        self.history: list[tuple[Config, Outcome]] = []

    def tell(self, params: Config, outcome: Outcome) -> None:
        self.history.append((dict(params), outcome))

    def ask(self, pending: Sequence[Config] = ()) -> Proposal:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # GPs of a few dozen points: extra threads only add overhead (2x CPU here)
        try:
            return self._ask(pending)
        finally:
            torch.set_num_threads(threads)

    def _ask(self, pending: Sequence[Config]) -> Proposal:
        n = len(self.history)
        key = draw_key(n, pending)
        candidates = self._candidates(np.random.default_rng((self.seed, *key, 2)), pending)
        ran = [(p, o) for p, o in self.history if o.status != "error"]
        if n < self.n_init or not ran:
            return Proposal(candidates[0], phase="init")
        torch.manual_seed(self.seed * 1009 + n + (7919 * len(pending) if pending else 0))
        x_cand = self._x(candidates)
        measured = [(p, float(o.utility)) for p, o in ran if o.utility is not None]
        crashed = [o.status == "crash" for _, o in ran]
        con = self._fit(self._x([p for p, _ in ran]), [1.0 if c else -1.0 for c in crashed]) if any(crashed) else None
        if len(measured) < 2:
            if con is None:
                return Proposal(candidates[0], phase="init")
            post = con.posterior(x_cand)  # nothing measured yet: go where starting is most likely
            score = -post.mean.squeeze(-1) / post.variance.clamp_min(1e-9).sqrt().squeeze(-1)
            return Proposal(candidates[int(torch.argmax(score))], phase="feasibility")
        y = [math.log1p(max(u, 0.0)) for _, u in measured]
        obj: Any = self._fit(self._x([p for p, _ in measured]), y)
        if pending:  # kriging believer: the pending configs as if measured at the GP's own mean
            x_pending = self._x(list(pending))
            with torch.no_grad():
                believed = obj.posterior(x_pending).mean
            obj = obj.condition_on_observations(x_pending, believed)
        if con is None:  # no crash seen: the constraint is "always starts", plain log-EI
            con = self._fit(self._x([p for p, _ in ran]), [-1.0] * len(ran))
        acq = LogConstrainedExpectedImprovement(ModelListGP(obj, con), best_f=max(y), objective_index=0,
                                                constraints={1: (None, 0.0)})
        with torch.no_grad():
            score = acq(x_cand.unsqueeze(1))
        return Proposal(candidates[int(torch.argmax(score))], phase="bo")

    # ------------------------------------------------------------------ helpers
    def _candidates(self, rng: np.random.Generator, pending: Sequence[Config] = ()) -> list[Config]:
        """Valid configs, neither tried nor running, that the memory prior allows (all of them if it allows none)."""
        tried = {config_key(p) for p in (*(p for p, _ in self.history), *pending)}
        out: list[Config] = []
        fallback: list[Config] = []
        for _ in range(self.n_candidates * 4):
            c = self.space.sample(rng)
            if config_key(c) in tried:
                continue
            fallback.append(c)
            if self.prior is None or self.prior(self.space.finalize(c)):
                out.append(c)
            if len(out) >= self.n_candidates:
                break
        if not out and not fallback:
            raise InputError("constrained-bo: every config of this space has been tried")
        return out or fallback

    def _x(self, configs: list[Config]) -> torch.Tensor:
        return torch.tensor([self._encode(c) for c in configs], dtype=torch.float64)

    def _encode(self, params: Config) -> list[float]:
        row: list[float] = []
        for k in self.space.knobs:
            if k.kind == "categorical":
                row += [float(params.get(k.name) == choice) for choice in k.choices]
            elif k.kind == "bool":
                row.append(float(params[k.name]) if k.name in params else 0.5)
            else:
                row.append(k.unit(params[k.name]))
        return row

    def _fit(self, x: torch.Tensor, y: list[float]) -> SingleTaskGP:
        yt = torch.tensor(y, dtype=torch.float64).unsqueeze(-1)
        if float(yt.std()) == 0.0 or len(y) < 2:  # a constant target: jitter keeps the GP well posed
            yt = yt + 1e-3 * torch.randn_like(yt)
        model = SingleTaskGP(x, yt)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with contextlib.suppress(ModelFittingError):  # else the prior hyperparameters: still usable
                fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model),
                                 optimizer_kwargs={"options": {"maxiter": MAX_FIT_ITERS}})
        return model
