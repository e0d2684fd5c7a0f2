"""Multi-seed analysis of a results directory: the paper's table, ``summary.json`` and its figures.

Every ``*.jsonl`` trial log under the directory is one (seed, optimizer) study; other JSONL files
(calibration grids, load lists) are skipped. Studies are compared only with studies of the same identity
(model, GPU, backend, SLO, workload, space, budget): a folder that mixes identities is refused, naming the
field that differs, unless ``where`` filters pick one (``tune`` puts every study in ``results/runs``, so a
mixed folder is the normal case, and pooling an L4 study with an H100 one by seed would be a wrong table).
Statistics use the definitions in :mod:`sloguard_lib.analysis.stats`; the fast-cluster threshold is computed once
over all trials of the comparison so every optimizer is judged by the same line. Used by ``sloguard
report`` and by ``sloguard_lib/notebooks/analysis.ipynb`` (which only calls these functions).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from sloguard_lib.analysis import stats
from sloguard_lib.errors import InputError
from sloguard_lib.measure.slo import SLO
from sloguard_lib.measure.workload import Workload
from sloguard_lib.study.incumbent import VALIDATED
from sloguard_lib.study.trial_log import is_trial_log, read_log

#: how each crash status is drawn wherever a figure colours trials by status
STATUS_COLOURS = {"ok": "tab:green", "slo_violation": "tab:orange", "crash": "tab:red", "error": "tab:gray"}
STATUS_MARKERS = {"ok": "o", "slo_violation": "s", "crash": "X", "error": "D"}
BOOTSTRAP_SEED = 0  # seaborn's bootstrap CIs: the same figure on every run of the report


def identity(header: Mapping[str, Any]) -> dict[str, str]:
    """What makes two studies comparable, flattened to ``field: value`` strings (``slo.ttft_p99_ms``,
    ``workload.concurrency``, ...; the space as a digest of its knobs)."""
    out = {"model": str(header.get("model")), "gpu": str(header.get("gpu")), "backend": str(header.get("backend")),
           "budget": str(header.get("budget"))}
    for k, v in ({"goodput_def": SLO().goodput_def} | (header.get("slo") or {})).items():  # logs from before it
        out[f"slo.{k}"] = str(v)
    for k, v in Workload.from_dict(header.get("workload") or {}).to_dict().items():
        out[f"workload.{k}"] = str(v)
    space = json.dumps(header.get("space"), sort_keys=True).encode()
    out["space"] = hashlib.sha256(space).hexdigest()[:10]
    return out


def _matches(ident: Mapping[str, str], where: Sequence[str]) -> bool:
    for cond in where:
        key, sep, value = cond.partition("=")
        if not sep or key.strip() not in ident:
            raise InputError(f"--where {cond!r}: expected FIELD=VALUE with FIELD one of {', '.join(ident)}")
        have = ident[key.strip()]
        try:
            if float(have) != float(value):
                return False
        except ValueError:
            if have != value.strip():
                return False
    return True


def select_logs(results_dir: str | Path, where: Sequence[str] = ()) -> list[tuple[Path, dict[str, str]]]:
    """The study logs under ``results_dir`` that pass ``where``, all of one identity (else an error)."""
    found = [(p, identity(read_log(p).header)) for p in sorted(Path(results_dir).rglob("*.jsonl")) if is_trial_log(p)]
    kept = [(p, ident) for p, ident in found if _matches(ident, where)]
    groups: dict[str, list[dict[str, str]]] = {}
    for _, ident in kept:
        groups.setdefault(json.dumps(ident, sort_keys=True), []).append(ident)
    if len(groups) > 1:
        first = [g[0] for g in groups.values()]
        key = next(k for k in first[0] if len({f.get(k) for f in first}) > 1)
        counts: dict[str, int] = {}
        for _, ident in kept:
            counts[ident[key]] = counts.get(ident[key], 0) + 1
        listed = ", ".join(f"{v}: {n} logs" for v, n in counts.items())
        raise InputError(f"{str(results_dir)!r} mixes studies of different {key} ({listed}); they are not "
                         f"comparable: pick one with --where {key}={next(iter(counts))}")
    return kept


def describe_identity(ident: Mapping[str, str]) -> str:
    return (f"{ident['model']} on {ident['gpu']} ({ident['backend']}), SLO TTFT p99 {ident['slo.ttft_p99_ms']} ms "
            f"/ ITL p99 {ident['slo.itl_p99_ms']} ms, {ident['workload.concurrency']} concurrent "
            f"{ident['workload.input_len']}/{ident['workload.output_len']}-token requests, budget {ident['budget']}")


#: the original SLO-Guard's layout: ``<optimizer>_seed<N>/results.jsonl``, one trial per line, no header
ORIGINAL_RUN = re.compile(r"^(?P<optimizer>.+)_seed(?P<seed>\d+)$")
ORIGINAL_STATUS = {"feasible": "ok", "crash": "crash", "error": "error"}  # anything else missed its SLO
FORMATS = ("auto", "sloguard", "original")


def original_runs(results_dir: str | Path) -> list[Path]:
    """The ``results.jsonl`` files of a results folder in the original SLO-Guard's layout."""
    return [d / "results.jsonl" for d in sorted(Path(results_dir).iterdir())
            if d.is_dir() and ORIGINAL_RUN.match(d.name) and (d / "results.jsonl").is_file()]


def load_trials(results_dir: str | Path, where: Sequence[str] = (), definitions: str = "sloguard",
                fmt: str = "auto") -> pd.DataFrame:
    """One row per trial of every comparable log under ``results_dir`` (recursively), with metrics flattened;
    ``latency_ms`` is the latency of ``definitions``. ``fmt="original"`` (or ``auto`` on a folder of the
    original SLO-Guard's runs) reads that layout, whose only latency is the mean (``avg_latency_ms``)."""
    if not Path(results_dir).is_dir():
        raise InputError(f"results folder {str(results_dir)!r} does not exist")
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    latency = stats.DEFINITIONS[definitions].latency_metric
    rows = []
    if fmt == "original" or (fmt == "auto" and original_runs(results_dir)
                             and not any(is_trial_log(p) for p in Path(results_dir).rglob("*.jsonl"))):
        for path in original_runs(results_dir):
            run = ORIGINAL_RUN.match(path.parent.name)
            assert run is not None
            for t in map(json.loads, filter(str.strip, path.read_text().splitlines())):
                status = ORIGINAL_STATUS.get(t.get("status"), "slo_violation")
                rows.append({
                    "log": str(path), "study_id": path.parent.name, "optimizer": run["optimizer"],
                    "seed": int(run["seed"]), "trial": int(t["trial"]) - 1, "phase": t.get("phase"), "status": status,
                    "crash_class": None, "utility": t.get("goodput_tps") if status == "ok" else None,
                    "goodput_tok_s": t.get("goodput_tps"), "throughput_tok_s": None, "ttft_p99_ms": None,
                    "itl_p99_ms": None, "latency_ms": t.get("avg_latency_ms") if status != "crash" else None,
                    "gpu_seconds": None, **{f"knob.{k}": v for k, v in (t.get("config") or {}).items()},
                })
    else:
        for path, _ in select_logs(results_dir, where):
            for t in read_log(path).trials:
                if t.get("phase") == VALIDATED:  # re-measurements after the study: not its search
                    continue
                m = t.get("metrics") or {}
                rows.append({
                    "log": str(path), "study_id": t["study_id"], "optimizer": t["optimizer"], "seed": t["seed"],
                    "trial": t["trial"], "phase": t.get("phase"), "status": t["status"],
                    "crash_class": t.get("crash_class"), "utility": t.get("utility"),
                    "goodput_tok_s": m.get("goodput_tok_s"), "throughput_tok_s": m.get("throughput_tok_s"),
                    "ttft_p99_ms": m.get("ttft_p99_ms"), "itl_p99_ms": m.get("itl_p99_ms"),
                    "latency_ms": m.get(latency) if t["status"] != "crash" else None,
                    "gpu_seconds": t.get("gpu_seconds"),
                    **{f"knob.{k}": v for k, v in (t.get("config") or {}).items()},
                })
    if not rows:
        raise InputError(f"no trial logs (*.jsonl with trials) under {str(results_dir)!r}")
    return pd.DataFrame(rows)


def per_run(df: pd.DataFrame, definitions: str = "sloguard") -> pd.DataFrame:
    """One row per (optimizer, seed) run with the paper's per-run statistics."""
    d = stats.DEFINITIONS[definitions]
    threshold = d.fast_threshold_ms or stats.fast_cluster_threshold(df["latency_ms"].dropna().tolist())
    out = []
    for (opt, seed), run in df.sort_values("trial").groupby(["optimizer", "seed"]):
        lat = [None if pd.isna(v) else float(v) for v in run["latency_ms"]]
        flags = stats.fast_flags(lat, threshold)
        ok = run[run.status == "ok"]
        out.append({
            "optimizer": opt, "seed": seed, "trials": len(run), "fast_trials": sum(flags),
            "post_hit_consistency": stats.post_hit_consistency(flags, d.post_hit_if_last),
            "best_latency_ms": min((v for v in lat if v is not None), default=math.nan),
            "first_fast_hit_trial": flags.index(True) + 1 if True in flags else math.nan,
            "best_goodput_tok_s": float(ok["utility"].max()) if len(ok) else 0.0,
            "feasible": int((run.status == "ok").sum()), "crashes": int((run.status == "crash").sum()),
        })
    return pd.DataFrame(out).assign(fast_threshold_ms=threshold)


SUMMARY_METRICS = ("fast_trials", "post_hit_consistency", "best_latency_ms", "first_fast_hit_trial",
                   "best_goodput_tok_s")


def summary(runs: pd.DataFrame, baseline: str | None = None, definitions: str = "sloguard") -> dict[str, Any]:
    """Mean ± sd (sample) per optimizer and Mann-Whitney p-values against ``baseline`` (default: random), one- or
    two-sided as ``definitions`` say."""
    d = stats.DEFINITIONS[definitions]
    optimizers = sorted(runs.optimizer.unique())
    if baseline is not None and baseline not in optimizers:
        raise InputError(f"baseline {baseline!r} is not among the optimizers here: {', '.join(optimizers)}")
    base_name = str(baseline) if baseline else ("random" if "random" in optimizers else optimizers[0])
    base = runs[runs.optimizer == base_name]
    out: dict[str, Any] = {"definitions": d.name, "definitions_text": d.describe, "baseline": base_name,
                           "fast_threshold_ms": float(runs.fast_threshold_ms.iloc[0]), "optimizers": {}}
    for opt in optimizers:
        r = runs[runs.optimizer == opt]
        entry: dict[str, Any] = {"n_seeds": len(r), "trials": int(r.trials.sum()),
                                 "feasible": int(r.feasible.sum()), "crashes": int(r.crashes.sum())}
        for m in SUMMARY_METRICS:
            mean, sd = stats.mean_std(r[m].astype(float).tolist())
            entry[m] = {"mean": mean, "sd": sd}
            if opt != base_name:
                side = "greater" if m in d.one_sided else "two-sided"
                entry[m]["p_vs_" + base_name] = stats.mann_whitney_p(r[m].astype(float).tolist(),
                                                                     base[m].astype(float).tolist(), side)
                entry[m]["test"] = side
        out["optimizers"][opt] = entry
    return out


def paper_table(summ: dict[str, Any]) -> pd.DataFrame:
    """The seed's table: metrics as rows, optimizers as columns, plus the Mann-Whitney p column."""
    base = summ["baseline"]
    others = [o for o in summ["optimizers"] if o != base]
    cols = [base, *others]
    rows = {}
    labels = {"fast_trials": "Fast-cluster trials", "post_hit_consistency": "Post-hit consistency",
              "best_latency_ms": "Best latency (ms)", "first_fast_hit_trial": "First fast hit (trial)",
              "best_goodput_tok_s": "Best goodput (tok/s)"}
    for key, label in labels.items():
        fmt = ".3f" if key == "post_hit_consistency" else ".2f"
        row = {o: f"{summ['optimizers'][o][key]['mean']:{fmt}} ± {summ['optimizers'][o][key]['sd']:{fmt}}"
               for o in cols}
        for o in others:
            entry = summ["optimizers"][o][key]
            side = " (one-sided)" if entry.get("test") == "greater" else ""
            row[f"p ({o} vs {base})"] = f"{entry.get('p_vs_' + base, math.nan):.3g}{side}"
        rows[label] = row
    rows["Feasibility"] = {o: f"{summ['optimizers'][o]['feasible']} / {summ['optimizers'][o]['trials']}"
                           for o in cols}
    rows["Crashes"] = {o: str(summ["optimizers"][o]["crashes"]) for o in cols}
    return pd.DataFrame(rows).T.fillna("—")


def write_figures(df: pd.DataFrame, runs: pd.DataFrame, out_dir: str | Path,
                  definitions: str = "sloguard") -> list[Path]:
    """Convergence, best-so-far, latency distribution, crash map and per-knob effects, as PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns
    from matplotlib.ticker import MaxNLocator

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    threshold = float(runs.fast_threshold_ms.iloc[0])
    d = df.sort_values("trial").copy()
    d["best_so_far"] = d.groupby(["optimizer", "seed"])["utility"].transform(
        lambda s: pd.Series(stats.best_so_far([None if pd.isna(v) else v for v in s]), index=s.index))
    d["trial_1"] = d["trial"] + 1

    def save(fig: Any, name: str) -> None:
        path = out / name
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)

    g = sns.relplot(data=d, x="trial_1", y="best_so_far", hue="optimizer", col="optimizer", units="seed",
                    estimator=None, kind="line", height=3.2, aspect=1.2, alpha=0.7)
    g.set_axis_labels("trial", "best feasible goodput so far (tok/s)")
    for ax in g.axes.flat:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    g.figure.suptitle("Convergence per seed (one line per seed)", y=1.03)
    save(g.figure, "convergence_per_seed.png")

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    sns.lineplot(data=d, x="trial_1", y="best_so_far", hue="optimizer", errorbar=("ci", 95), seed=BOOTSTRAP_SEED,
                 ax=ax)
    ax.set(xlabel="trial", ylabel="best feasible goodput so far (tok/s)", title="Best-so-far, mean and 95% CI")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    save(fig, "best_so_far.png")

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    lat = d.dropna(subset=["latency_ms"])
    sns.histplot(data=lat, x="latency_ms", hue="optimizer", log_scale=True, bins=30, element="step", ax=ax)
    if math.isfinite(threshold):
        ax.axvline(threshold, color="black", ls="--", lw=1)
        ax.text(threshold, ax.get_ylim()[1] * 0.9, " fast-cluster threshold", fontsize=8)
    metric = stats.DEFINITIONS[definitions].latency_metric.removesuffix("_ms")
    ax.set(xlabel=f"trial latency ({metric}, ms, log scale)", ylabel="trials",
           title="Latency distribution (bimodal fast cluster)")
    save(fig, "latency_distribution.png")

    if {"knob.gpu_memory_utilization", "knob.max_model_len"} <= set(d.columns):
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        sns.scatterplot(data=d, x="knob.gpu_memory_utilization", y="knob.max_model_len", hue="status",
                        style="status", s=45, ax=ax, hue_order=list(STATUS_COLOURS), palette=STATUS_COLOURS,
                        style_order=list(STATUS_MARKERS), markers=STATUS_MARKERS)
        ax.set(xlabel="gpu_memory_utilization", ylabel="max_model_len (tokens)", yscale="log",
               title="Crash map over memory knobs")
        ax.legend(title="status", loc="center left", bbox_to_anchor=(1.01, 0.5))
        save(fig, "crash_map.png")

    knobs = [c for c in d.columns if c.startswith("knob.") and d[c].nunique() > 1]
    if knobs:
        cols = 3
        rows = math.ceil(len(knobs) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
        nc = d[d.status != "crash"]
        for i, (ax, knob) in enumerate(zip(axes.flat, knobs, strict=False)):
            legend = i == 0
            if nc[knob].dtype == bool or nc[knob].dtype == object:
                sns.stripplot(data=nc, x=knob, y="goodput_tok_s", hue="optimizer", ax=ax, size=4, legend=legend)
            else:
                sns.scatterplot(data=nc, x=knob, y="goodput_tok_s", hue="optimizer", ax=ax, s=20, legend=legend)
            ax.set(xlabel=knob.removeprefix("knob."), ylabel="goodput (tok/s)")
        for ax in list(axes.flat)[len(knobs):]:
            ax.axis("off")
        fig.suptitle("Per-knob effect on goodput (non-crashed trials)")
        fig.tight_layout()
        save(fig, "knob_effects.png")
    return paths


def build_report(results_dir: str | Path, output: str | Path, baseline: str | None = None,
                 where: Sequence[str] = (), definitions: str = "sloguard", fmt: str = "auto") -> dict[str, Any]:
    """Everything ``sloguard report`` produces: summary.json in the results dir (``summary_seed.json`` with the
    seed's definitions, so the original project's own ``summary.json`` is never overwritten), figures in
    ``output``."""
    df = load_trials(results_dir, where, definitions, fmt)
    runs = per_run(df, definitions)
    summ = summary(runs, baseline, definitions)
    first = Path(df["log"].iloc[0])
    original = not is_trial_log(first)
    ident = {"format": "original SLO-Guard results"} if original else identity(read_log(first).header)
    summ["identity"] = ident
    # a batch read while it still runs (issue #17's real one spans device sessions): say which runs are short of
    # their budget, since fast-cluster counts and best-so-far compare unequal numbers of trials until then
    budget = None if original else int(ident["budget"])
    summ["incomplete"] = [] if budget is None else [
        {"optimizer": r.optimizer, "seed": int(r.seed), "trials": int(r.trials), "budget": budget}
        for r in runs.itertuples() if int(r.trials) < budget]
    name = "summary.json" if definitions == "sloguard" else f"summary_{definitions}.json"
    (Path(results_dir) / name).write_text(json.dumps(summ, indent=2, default=float))
    summ["summary_path"] = str(Path(results_dir) / name)
    summ["identity_label"] = ident["format"] if original else describe_identity(ident)
    summ["figures"] = [str(p) for p in write_figures(df, runs, output, definitions)]
    summ["table"] = paper_table(summ).to_string()
    return summ
