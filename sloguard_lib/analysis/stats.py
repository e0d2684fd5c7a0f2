"""Multi-seed statistics of the SLO-Guard paper, shared by the benchmark suite and the analysis notebook.

Definitions (the seed's, made exact):

* **Latency** of a trial: its E2E p50 in ms (``LATENCY_METRIC``); crashed trials have none.
* **Fast cluster**: the serving landscape is bimodal (CUDA graphs vs eager dominate), so the pooled
  log-latencies of *all* trials being compared (every seed and optimizer of one scenario, so everyone is
  judged by the same line) are split into two classes by the natural break that minimises the
  within-class sum of squares (1-D two-means); the fast cluster is the lower class. When the two class
  means are less than ``MIN_GAP_RATIO`` apart the distribution is not bimodal and the fast cluster is
  "within ``FALLBACK_TOLERANCE`` of the best latency".
* **Fast-cluster trials / budget**: how many of a run's trials landed in the fast cluster.
* **Post-hit consistency**: after a run's first fast-cluster trial, the fraction of its *later* trials
  that are also fast (NaN when the run never hits, or hits on its last trial).
* p-values are two-sided Mann-Whitney U tests (scipy) across seeds.

The original SLO-Guard's own analysis (``scripts/compute_multiseed_stats.py`` at its commit ``bb40a7b``) differs
in three ways, and :data:`DEFINITIONS` names both sets so a table always says which it used: a trial's latency
is its *mean* request latency (``avg_latency_ms``), the fast cluster is "latency < 1,000 ms", the fast-cluster
and post-hit tests are one-sided (the other optimizer better than the baseline), and a run whose first fast hit
is its last trial has post-hit consistency 1.0 ("vacuously consistent").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import mannwhitneyu, ttest_1samp

LATENCY_METRIC = "e2e_p50_ms"
MIN_GAP_RATIO = 1.25
FALLBACK_TOLERANCE = 0.10


@dataclass(frozen=True)
class Definitions:
    name: str
    latency_metric: str  # the per-trial latency: a metrics key of our logs
    fast_threshold_ms: float | None  # None: the natural break of the pooled latencies
    one_sided: tuple[str, ...]  # per-run statistics tested as "other optimizer > baseline"
    post_hit_if_last: float  # post-hit consistency of a run whose first fast hit is its last trial
    describe: str


DEFINITIONS = {
    "sloguard": Definitions("sloguard", LATENCY_METRIC, None, (), math.nan,
                            "latency = E2E p50; fast cluster = natural break of pooled log-latencies; "
                            "two-sided Mann-Whitney U"),
    "seed": Definitions("seed", "e2e_mean_ms", 1000.0, ("fast_trials", "post_hit_consistency"), 1.0,
                        "latency = mean request latency; fast cluster = latency < 1000 ms; one-sided Mann-Whitney "
                        "U (other > baseline) for fast-cluster trials and post-hit consistency, two-sided for the "
                        "rest; post-hit = 1.0 when the first fast hit is the last trial"),
}


def fast_cluster_threshold(latencies: Sequence[float]) -> float:
    """The latency below which a trial is in the fast cluster (see module docstring)."""
    vals = np.sort(np.asarray([v for v in latencies if v is not None and math.isfinite(v) and v > 0]))
    if vals.size == 0:
        return math.nan
    if vals.size > 1:
        logs = np.log(vals)
        # two-class natural break: the split that minimises the within-class sum of squares (1-D k-means)
        sse = [logs[:i].var() * i + logs[i:].var() * (len(logs) - i) for i in range(1, len(logs))]
        i = int(np.argmin(sse)) + 1
        if math.exp(logs[i:].mean() - logs[:i].mean()) >= MIN_GAP_RATIO:
            return float(math.exp((logs[i - 1] + logs[i]) / 2))
    return float(vals[0] * (1 + FALLBACK_TOLERANCE))


def fast_flags(latencies: Sequence[float | None], threshold: float) -> list[bool]:
    return [v is not None and math.isfinite(v) and v < threshold for v in latencies]


def post_hit_consistency(flags: Sequence[bool], if_last: float = math.nan) -> float:
    if True not in flags:
        return math.nan
    after = list(flags)[list(flags).index(True) + 1:]
    return sum(after) / len(after) if after else if_last


def trials_to_reach(best_so_far: Sequence[float], target: float) -> int | None:
    """1-based trial count at which the running best first reaches ``target`` (None if never)."""
    for i, v in enumerate(best_so_far, start=1):
        if v >= target:
            return i
    return None


def best_so_far(values: Sequence[float | None]) -> list[float]:
    out, best = [], 0.0
    for v in values:
        if v is not None and math.isfinite(v):
            best = max(best, v)
        out.append(best)
    return out


def mann_whitney_p(a: Sequence[float], b: Sequence[float], alternative: str = "two-sided") -> float:
    """p of the Mann-Whitney U test of ``a`` against ``b`` (``alternative="greater"``: a tends to be larger)."""
    a_ = [x for x in a if math.isfinite(x)]
    b_ = [x for x in b if math.isfinite(x)]
    if not a_ or not b_ or (len(set(a_)) == 1 and set(a_) == set(b_)):
        return math.nan if not a_ or not b_ else 1.0
    return float(mannwhitneyu(a_, b_, alternative=alternative).pvalue)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if math.isfinite(x)], dtype=float)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def paired_diff_pct(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    """Mean of the per-round relative differences a/b - 1, in %, with a paired 95 % t-interval. For A/Bs on a
    real server whose loads run back to back in alternating order: the drift over a session (whole loads shift by
    +-15 % on the H100) cancels within a pair."""
    d = np.asarray(a, dtype=float) / np.asarray(b, dtype=float) - 1
    if len(d) < 2:
        return 100 * float(d.mean()), math.nan, math.nan
    ci = ttest_1samp(d, 0.0).confidence_interval(0.95)
    return 100 * float(d.mean()), 100 * float(ci.low), 100 * float(ci.high)
