"""The ``replay`` backend: answer trials from recorded real measurements, so studies re-run on real data in CI.

Sources are JSONL files of either kind the project writes: calibration grids (``scripts/device/calibrate.py``:
one record per (config, load) or per start-up crash) and study logs (a header with the workload, one
record per trial). Configs are completed with vLLM's defaults before matching, because a grid records
only the flags it passed.

Launch finds the recorded config nearest to the asked one (exact when the completed configs are equal;
else nearest in a log-scaled knob space) and, if that config crashed, raises the recorded crash. Loading
then takes the recorded load of the same workload nearest to the config. Every answer says how it was
matched (``engine_info.replay``: exact or nearest, the distance, the source record), so a study on replayed
data never passes nearest-neighbour answers off as measurements.

Records hold percentiles, not per-request timings, so the requests handed to metrics and the SLO check are
*reconstructed*: TTFTs and inter-token gaps drawn evenly from a piecewise-linear quantile function through
the recorded p50/p95/p99 whose lower end is set so the mean matches too. Percentiles therefore come back
within a few percent of the record, and per-request goodput can be recomputed under any other SLO (with
the caveat that every request gets the trial-level gap distribution).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sloguard_lib.engine.base import EngineCrash, ServerInfo
from sloguard_lib.engine.sim import vllm_defaults
from sloguard_lib.errors import InputError
from sloguard_lib.hardware import GpuProfile, ModelShape, latency_floor_ms
from sloguard_lib.measure.metrics import LoadResult, RequestResult
from sloguard_lib.measure.workload import Workload
from sloguard_lib.study.space import Config, ConfigDistance, config_key

#: the real H100 data shipped with the package (so a wheel replays it too); ``results/h100/README.md`` tells its story
H100_DATA = Path(__file__).resolve().parents[1] / "data" / "h100"
#: workload fields that only change which prompts were sent, not the load's shape
_IGNORED_WORKLOAD_FIELDS = ("seed", "warmup", "num_requests", "repeats")


def default_data() -> list[Path]:
    """The committed real H100 data: the calibration grid and the real study."""
    return [H100_DATA / "calibration.jsonl", *sorted((H100_DATA / "study").glob("*.jsonl"))]


@dataclass(frozen=True)
class Recorded:
    """One real measurement: a completed config and either its load metrics or its start-up crash."""

    source: str
    config: Config
    workload: Mapping[str, Any] | None  # None for a start-up crash
    metrics: Mapping[str, float]
    start_s: float
    kv_cache_tokens: int | None = None
    engine_version: str = "vllm-unknown"
    crash_class: str | None = None
    crash_message: str = ""
    log_excerpt: str = ""


def workload_key(workload: Mapping[str, Any]) -> str:
    full = Workload.from_dict(workload).to_dict()  # records older than a Workload field get its default
    return repr(sorted((k, v) for k, v in full.items() if k not in _IGNORED_WORKLOAD_FIELDS))


def load_records(paths: Iterable[str | Path], model: ModelShape, gpu: GpuProfile) -> list[Recorded]:
    """Parse calibration grids and study logs; keep the records of this model on this GPU."""
    defaults = vllm_defaults(gpu, model)
    out: list[Recorded] = []
    for path in map(Path, paths):
        if not path.is_file():
            raise InputError(f"replay data {str(path)!r} does not exist")
        header: dict[str, Any] = {}
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"replay data {str(path)!r} line {n} is not JSON: {e.msg}") from None
            if rec.get("kind") == "study":
                header = rec
                continue
            parsed = _parse(rec, header, f"{path.name}:{n}", defaults)
            if parsed is not None and _same_hardware(rec | {k: header[k] for k in ("model", "gpu") if k in header},
                                                     model, gpu):
                out.append(parsed)
    if not out:
        raise InputError(f"no recorded measurement of {model.name} on {gpu.name} in "
                         f"{', '.join(str(p) for p in paths)}")
    return out


def _parse(rec: Mapping[str, Any], header: Mapping[str, Any], source: str, defaults: Config) -> Recorded | None:
    status = rec.get("status")
    if status == "crash" and rec.get("crash_phase", "startup") == "startup":
        return Recorded(source, defaults | rec["config"], None, {}, float(rec.get("elapsed_s") or
                        rec.get("engine_start_s") or 0.0), crash_class=rec["crash_class"],
                        crash_message=rec.get("crash_message") or "", log_excerpt=rec.get("log_excerpt") or "")
    if status not in ("ok", "slo_violation") or not rec.get("metrics"):
        return None  # harness errors and crashes under load carry no complete measurement
    workload = rec.get("workload") or header.get("workload")
    if workload is None:
        return None
    return Recorded(source, defaults | rec["config"], workload, rec["metrics"],
                    float(rec.get("start_s") or rec.get("engine_start_s") or 0.0), rec.get("kv_cache_tokens"),
                    rec.get("engine_version") or "vllm-unknown")


def _same_hardware(rec: Mapping[str, Any], model: ModelShape, gpu: GpuProfile) -> bool:
    rec_model, rec_gpu = str(rec.get("model", "")).lower(), str(rec.get("gpu", "")).lower()
    return rec_model.split(" ")[0] == model.name.lower() and gpu.name.split("-")[0] in rec_gpu


class ReplayEngine:
    name = "replay"

    def __init__(self, model: ModelShape, gpu: GpuProfile, data: Sequence[str | Path] | None = None) -> None:
        self.model, self.gpu = model, gpu
        self.data = [Path(p) for p in (data or default_data())]
        self.records = load_records(self.data, model, gpu)
        self.defaults = vllm_defaults(gpu, model)
        self.distance = ConfigDistance()

    def close(self) -> None:
        """Recorded measurements hold nothing open."""

    def describe(self) -> dict[str, Any]:
        versions = sorted({r.engine_version for r in self.records if r.crash_class is None})
        return {"backend": self.name, "engine_version": "replay:" + ",".join(versions), "gpu": self.gpu.name,
                "model": self.model.name, "data": [str(p) for p in self.data]}

    def latency_floor_ms(self, workload: Workload) -> tuple[float, float]:
        """Also the check, before any trial, that this workload was recorded (else every trial would fail)."""
        self.loads_of(workload)
        return latency_floor_ms(self.model, self.gpu, workload.input_len)

    def loads_of(self, workload: Workload) -> list[Recorded]:
        key = workload_key(workload.to_dict())
        same = [r for r in self.records if r.workload is not None and workload_key(r.workload) == key]
        if not same:
            recorded = sorted({Workload.from_dict(r.workload).describe() for r in self.records if r.workload})
            raise InputError(f"replay has no recorded load of the workload {workload.describe()!r}; recorded: "
                             + "; ".join(recorded))
        return same

    def nearest(self, config: Config, records: Iterable[Recorded]) -> tuple[Recorded, float]:
        scored = [(self.distance(config, r.config), i, r) for i, r in enumerate(records)]
        if not scored:
            raise InputError("no recorded measurement to replay")
        d, _, rec = min(scored, key=lambda s: (s[0], s[1]))
        return rec, d

    def restore(self, trials: Sequence[Mapping[str, Any]]) -> None:
        """Recorded measurements carry no state between trials."""

    def launch(self, config: Config, *, trial_seed: int, label: str = "") -> ReplayServer:
        full = self.defaults | dict(config)
        rec, d = self.nearest(full, self.records)
        if rec.crash_class is not None:
            exact = config_key(full) == config_key(rec.config)
            note = "" if exact else f" [replayed from nearest record {rec.source}, distance {d:.3f}]"
            raise EngineCrash(rec.crash_class, rec.crash_message + note, elapsed_s=rec.start_s,
                              log_excerpt=rec.log_excerpt)
        return ReplayServer(self, full, trial_seed)


class ReplayServer:
    def __init__(self, engine: ReplayEngine, config: Config, seed: int) -> None:
        self.engine, self.config, self.seed = engine, config, seed
        loads = [r for r in engine.records if r.crash_class is None]
        rec, d = engine.nearest(config, loads)
        self.info = ServerInfo(backend="replay", engine_version=rec.engine_version, gpu=engine.gpu.name,
                               model=engine.model.name, start_s=rec.start_s, kv_cache_tokens=rec.kv_cache_tokens,
                               extra={"replay": {"start": _match(config, rec, d)}})

    def run_load(self, workload: Workload, until: Callable[[RequestResult], bool] | None = None) -> LoadResult:
        """``until`` is not honoured: a replayed load costs no GPU time to save, and its requests (rebuilt from
        percentiles) have no order in time to stop at."""
        rec, d = self.engine.nearest(self.config, self.engine.loads_of(workload))
        self.info.extra["replay"]["load"] = match = _match(self.config, rec, d)
        # a trial answered from another config's record is no measurement: summaries count these
        started = self.info.extra["replay"]["start"]
        self.info.extra["approximate"] = "nearest" in (match["match"], started["match"])
        return reconstruct(rec.metrics, workload, self.seed)

    def close(self) -> None:
        pass


def _match(config: Config, rec: Recorded, distance: float) -> dict[str, Any]:
    exact = config_key(config) == config_key(rec.config)
    return {"match": "exact" if exact else "nearest", "distance": round(distance, 4), "source": rec.source,
            "recorded_config": dict(rec.config)}


def quantile_samples(m: Mapping[str, float], prefix: str, n: int) -> np.ndarray:
    """``n`` values (seconds) evenly spaced in probability along a quantile function through the record's
    p50/p95/p99, its top extrapolated a little past p99 and its bottom chosen so the mean matches."""
    p50, p95, p99 = (m[f"{prefix}_p{p}_ms"] / 1000 for p in (50, 95, 99))
    mean = m.get(f"{prefix}_mean_ms", m[f"{prefix}_p50_ms"]) / 1000
    top = p99 + 0.25 * (p99 - p95)
    upper = 0.45 * (p50 + p95) / 2 + 0.04 * (p95 + p99) / 2 + 0.01 * (p99 + top) / 2
    bottom = min(max((mean - upper) / 0.25 - p50, 0.0), p50)
    probs = np.linspace(0.0, 1.0, n) if n > 1 else np.array([0.5])
    return np.asarray(np.interp(probs, [0.0, 0.5, 0.95, 0.99, 1.0], [bottom, p50, p95, p99, top]), dtype=float)


def reconstruct(m: Mapping[str, float], workload: Workload, seed: int) -> LoadResult:
    """Requests whose TTFT and gap percentiles reproduce the recorded ones (see the module docstring)."""
    rng = np.random.default_rng(seed)
    reqs = workload.requests()
    n = len(reqs)
    ttfts = rng.permutation(quantile_samples(m, "ttft", n))
    gaps_per_req = max(0, workload.output_len - 1)
    gaps = quantile_samples(m, "itl", max(1, gaps_per_req))
    out: list[RequestResult] = []
    for r, ttft in zip(reqs, ttfts, strict=True):
        itl = [float(g) for g in rng.permutation(gaps)[: r.output_len - 1]]
        out.append(RequestResult(index=r.index, ok=True, prompt_tokens=r.prompt_len, output_tokens=r.output_len,
                                 ttft_s=float(ttft), itl_s=itl, e2e_s=float(ttft) + sum(itl)))
    tokens = sum(r.output_len for r in reqs)
    duration = tokens / m["throughput_tok_s"] if m.get("throughput_tok_s") else float(m.get("duration_s", 1.0))
    stats = {k.removeprefix("engine_"): float(v) for k, v in m.items() if k.startswith("engine_")}
    return LoadResult(out, duration, stats)
