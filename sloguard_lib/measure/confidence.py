"""How sure a goodput is: a 95 % interval for one trial, and for a config over all its measurements.

A goodput measurement varies for two reasons, and they need different tools:

* which requests land on either side of an SLO edge: resampling the load's requests (a per-request bootstrap)
  sees this, and nothing else;
* how fast the whole load ran: on one H100 server single loads spread +-18 % in throughput, and the same config
  measured on two days was 35 % apart (results/h100/). Every request of a load shares that shift, so only
  independent loads see it.

Hence: a trial of several loads (``repeats``) gets a Student-t interval over its loads' goodputs; a trial of one
load gets the percentile bootstrap over its requests (duration held fixed), which is zero-width when every request
met the SLO: it says "no SLO-edge noise", not "no noise". A config measured on two or more loads (its trials'
loads together, e.g. tba-tpe's re-measurements or ``--validate``) gets the t-interval over all of them, which is
the interval a recommendation should be judged by.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

from sloguard_lib.measure.metrics import LoadResult
from sloguard_lib.measure.slo import SLO

LEVEL = 0.95
RESAMPLES = 999  # the interval's ends move < 1 % of its width between resample seeds at this count


def load_goodput(load: LoadResult, slo: SLO) -> float:
    """Output tokens of the load's good requests per second of it (the utility's goodput)."""
    return sum(r.output_tokens for r in load.requests if slo.is_good(r)) / max(load.duration_s, 1e-9)


def t_interval(values: Sequence[float]) -> tuple[float, float]:
    """Student-t interval of the mean of independent measurements (two or more)."""
    arr = np.asarray(values, dtype=float)
    mean, sem = float(arr.mean()), float(stats.sem(arr))
    if sem == 0.0:
        return mean, mean
    lo, hi = stats.t.interval(LEVEL, len(arr) - 1, loc=mean, scale=sem)
    return float(lo), float(hi)


def request_bootstrap(load: LoadResult, slo: SLO, seed: int) -> tuple[float, float]:
    """Percentile bootstrap of one load's goodput over its requests, the duration held fixed."""
    good = np.array([r.output_tokens if slo.is_good(r) else 0 for r in load.requests], dtype=float)
    scale = len(good) / max(load.duration_s, 1e-9)
    if good.size < 2 or np.all(good == good[0]):
        value = float(good.mean() * scale) if good.size else 0.0
        return value, value
    res = stats.bootstrap((good,), np.mean, confidence_level=LEVEL, n_resamples=RESAMPLES, method="percentile",
                          random_state=np.random.default_rng(seed))
    return float(res.confidence_interval.low * scale), float(res.confidence_interval.high * scale)


def trial_interval(loads: Sequence[LoadResult], slo: SLO, seed: int) -> tuple[float, float]:
    if len(loads) > 1:
        return t_interval([load_goodput(load, slo) for load in loads])
    return request_bootstrap(loads[0], slo, seed)
