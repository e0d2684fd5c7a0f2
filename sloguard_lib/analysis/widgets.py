"""ipywidgets trial inspector for ``sloguard_lib/notebooks/inspect.ipynb``.

Study and status dropdowns filter a trial list; selecting a trial shows its config, metrics, SLO
verdict, crash class and log excerpt; two knob dropdowns drive a scatter of all trials of the study,
coloured by goodput with crashes marked. All state lives in this class so it can be driven (and tested)
without a browser: set ``study.value``/``trial.value`` and read ``detail.value``.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import ipywidgets as w

from sloguard_lib.analysis.report import STATUS_COLOURS, STATUS_MARKERS
from sloguard_lib.errors import InputError
from sloguard_lib.study.trial_log import is_trial_log, read_log

STATUSES = ("all", "ok", "slo_violation", "crash", "error")


class TrialInspector:
    def __init__(self, results_dir: str | Path) -> None:
        # study logs only: a results folder also holds calibration grids and load lists (JSONL without a header)
        self.logs = {str(p): read_log(p) for p in sorted(Path(results_dir).rglob("*.jsonl")) if is_trial_log(p)}
        self.logs = {k: v for k, v in self.logs.items() if v.trials}
        if not self.logs:
            raise InputError(f"no trial logs with trials under {str(results_dir)!r}")
        self.study = w.Dropdown(options=list(self.logs), description="study", layout=w.Layout(width="95%"))
        self.status = w.Dropdown(options=STATUSES, value="all", description="status")
        # a fixed width: filtered down to a few short labels, the list otherwise shrank to a sliver (seen in the
        # browser test's screenshots, tests/test_browser.py)
        self.trial = w.Select(description="trial", rows=10, layout=w.Layout(width="230px", flex="0 0 auto"))
        self.detail = w.HTML()
        knobs = self._knobs()
        self.x = w.Dropdown(options=knobs, value=_pick(knobs, "gpu_memory_utilization"), description="x")
        self.y = w.Dropdown(options=knobs, value=_pick(knobs, "max_model_len"), description="y")
        self.plot = w.Output()
        for control in (self.study, self.status):
            control.observe(lambda _: self._refresh_trials(), names="value")
        self.trial.observe(lambda _: self._show_trial(), names="value")
        for control in (self.x, self.y):
            control.observe(lambda _: self._draw(), names="value")
        self.widget = w.VBox([self.study, w.HBox([self.status, self.x, self.y]), w.HBox([self.trial, self.detail]),
                              self.plot])
        self._refresh_trials()

    @property
    def trials(self) -> list[dict[str, Any]]:
        return self.logs[self.study.value].trials

    def _knobs(self) -> list[str]:
        names: dict[str, None] = {}
        for contents in self.logs.values():
            for t in contents.trials:
                names.update(dict.fromkeys(t.get("config") or {}))
        return list(names)

    def _refresh_trials(self) -> None:
        chosen = [t for t in self.trials if self.status.value in ("all", t["status"])]
        self.trial.options = [(f"{t['trial']:>3}  {t['status']}", t["trial"]) for t in chosen]
        self.trial.value = chosen[0]["trial"] if chosen else None
        self._show_trial()
        self._draw()

    def _show_trial(self) -> None:
        t = next((t for t in self.trials if t["trial"] == self.trial.value), None)
        if t is None:
            self.detail.value = "<i>no trial with this status</i>"
            return
        m = t.get("metrics") or {}
        verdict = {"ok": "met the SLO", "slo_violation": f"missed the SLO: {', '.join(t.get('violated') or [])}",
                   "crash": f"crashed: {t.get('crash_class')}", "error": "harness error"}[t["status"]]
        keys = ("goodput_tok_s", "throughput_tok_s", "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms",
                "e2e_p99_ms", "requests_ok", "requests_failed")
        rows = "".join(f"<tr><td>{k}</td><td>{m[k]:,.2f}</td></tr>" for k in keys if m.get(k) is not None)
        parts = [f"<b>trial {html.escape(str(t['trial']))}</b> ({html.escape(str(t.get('phase')))}): "
                 f"{html.escape(verdict)}",
                 f"<pre>{html.escape(json.dumps(t.get('config'), indent=1))}</pre>",
                 f"<table>{rows}</table>" if rows else ""]
        if t.get("crash_message"):
            parts.append(f"<b>message</b><pre>{html.escape(t['crash_message'])}</pre>")
        if t.get("log_excerpt") and t.get("log_excerpt") != t.get("crash_message"):
            parts.append(f"<b>log excerpt</b><pre>{html.escape(t['log_excerpt'])}</pre>")
        self.detail.value = "".join(parts)

    def _draw(self) -> None:
        import matplotlib.pyplot as plt
        from matplotlib.colors import Normalize

        self.plot.clear_output(wait=True)
        with self.plot:
            fig, ax = plt.subplots(figsize=(6, 3.6))
            shown = [t for t in self.trials if self.x.value in t["config"] and self.y.value in t["config"]]
            goodput = [(t.get("metrics") or {}).get("goodput_tok_s") or 0 for t in shown]
            norm = Normalize(0, max(goodput, default=0) or 1)
            for status, marker in STATUS_MARKERS.items():  # the report's markers: one legend for both
                group = [(t, g) for t, g in zip(shown, goodput, strict=True) if t["status"] == status]
                if not group:
                    continue
                xs, ys = [t["config"][self.x.value] for t, _ in group], [t["config"][self.y.value] for t, _ in group]
                if status in ("crash", "error"):
                    ax.scatter(xs, ys, marker=marker, color=STATUS_COLOURS[status], label=f"{status} ({len(group)})")
                else:
                    sc = ax.scatter(xs, ys, marker=marker, c=[g for _, g in group], cmap="viridis", norm=norm,
                                    edgecolors="black", linewidths=0.4, label=f"{status} ({len(group)})")
            if any(t["status"] in ("ok", "slo_violation") for t in shown):
                fig.colorbar(sc, ax=ax, label="goodput (tok/s)")
            if shown:
                ax.legend(loc="best", fontsize=8)
            ax.set(xlabel=self.x.value, ylabel=self.y.value, title="trials of this study")
            plt.show()


def _pick(options: list[str], preferred: str) -> str | None:
    return preferred if preferred in options else (options[0] if options else None)
