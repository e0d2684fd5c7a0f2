"""Which config a study recommends, from its measurements.

One load's goodput varies by 5-20 % with its seed, so a config measured more than once is judged by the
mean of its loads, not by its luckiest one. The study's recommendation and tba-tpe's choice of what to
measure again both rank configs this way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .space import config_key


def ranked(trials: Sequence[Mapping[str, Any]]) -> list[tuple[float, list[Mapping[str, Any]]]]:
    """(mean utility, its trial records) per launched config that met the SLO at least once, best first.

    A trial record needs ``config`` (as launched), ``status`` and ``utility``; an SLO miss counts with its
    penalised utility, a crash (no utility) not at all."""
    measured: dict[str, list[Mapping[str, Any]]] = {}
    for t in trials:
        if t.get("utility") is not None:
            measured.setdefault(config_key(t["config"]), []).append(t)
    means = [(sum(r["utility"] for r in rs) / len(rs), rs) for rs in measured.values()
             if any(r["status"] == "ok" for r in rs)]
    return sorted(means, key=lambda t: t[0], reverse=True)


def incumbent(trials: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The recommended config's best feasible trial record, with ``measurements`` and ``mean_utility`` added."""
    configs = ranked(trials)
    if not configs:
        return None
    mean, records = configs[0]
    best = max((r for r in records if r["status"] == "ok"), key=lambda r: r["utility"])
    return dict(best) | {"measurements": len(records), "mean_utility": mean}
