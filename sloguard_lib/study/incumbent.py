"""Which config a study recommends, from its measurements.

One load's goodput varies by 5-20 % with its seed, so a config measured more than once is judged by the
mean of its loads, not by its luckiest one. The study's recommendation and tba-tpe's choice of what to
measure again both rank configs this way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sloguard_lib.measure.confidence import t_interval
from sloguard_lib.study.space import config_key


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


VALIDATED = "validate"  # the phase of a re-measurement of a finalist (``--validate``)


def config_interval(records: Sequence[Mapping[str, Any]]) -> tuple[float, float, float, int]:
    """(mean, low, high, loads) of one config's goodput over every load of its trials: the t-interval from two
    loads on (:mod:`sloguard_lib.measure.confidence`), else its one trial's own interval. A trial that missed the
    SLO counts at its penalised utility, so a finalist that misses on re-measurement falls behind one that holds; a
    capacity trial by the load it sustained (its utility), one search alone with its bracket as the interval (not
    its goodput's, which is in tok/s)."""
    values = [r["utility"] if r["status"] != "ok" or r.get("capacity") else g for r in records
              for g in r.get("goodput_loads_tok_s") or [r["utility"]]]
    if len(values) > 1:
        lo, hi = t_interval(values)
        return sum(values) / len(values), lo, hi, len(values)
    if cap := records[0].get("capacity"):  # one search: the capacity lies in its bracket [sustained, failed)
        return values[0], values[0], cap["interval"][1] or values[0], 1
    lo, hi = records[0].get("goodput_ci95_tok_s") or (values[0], values[0])
    return values[0], lo, hi, 1


def recommend(trials: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The config a study reports, with its 95 % interval (``interval``: [low, high] tok/s).

    Without re-measurements it is the :func:`incumbent`. After ``--validate`` it is the finalist with the best
    lower bound over its re-measurements alone: the study's own measurements picked the finalists for being high,
    so they overstate them (the winner's curse), and a fresh server's loads do not."""
    finals: dict[str, list[Mapping[str, Any]]] = {}
    for t in trials:
        if t.get("phase") == VALIDATED and t.get("utility") is not None:
            finals.setdefault(config_key(t["config"]), []).append(t)
    held = [(config_interval(rs), rs) for rs in finals.values() if any(r["status"] == "ok" for r in rs)]
    if not held:  # not validated, or no finalist met the SLO again: the study's own ranking, said so
        best = incumbent(trials)
        if best is None:
            return None
        mine = [t for t in trials
                if t.get("utility") is not None and config_key(t["config"]) == config_key(best["config"])]
        _, lo, hi, _ = config_interval(mine)
        return best | {"interval": [lo, hi], "validated": False if finals else None}
    (mean, lo, hi, loads), rs = max(held, key=lambda s: s[0][1])
    pick = max((r for r in rs if r["status"] == "ok"), key=lambda r: r["utility"])
    return dict(pick) | {"measurements": loads, "mean_utility": mean, "interval": [lo, hi], "validated": True}
