"""The tuning loop: ask -> launch -> load -> metrics -> SLO -> log (fsync) -> tell, with exact resume.

Resume replays every logged trial into a fresh optimizer (``tell`` only) and continues from the next
trial number. Because the log is written before ``tell`` and optimizers are history-deterministic, a study
killed at any instant and resumed produces the same trials as one that was never interrupted: none lost,
none repeated.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import __version__
from .engine import Engine, make_engine
from .errors import InputError
from .hardware import get_gpu, kv_budget_tokens, memory_prior, resolve_model
from .incumbent import incumbent
from .optimizers import Optimizer, Outcome, Proposal, make_optimizer
from .slo import SLO
from .space import Config, SearchSpace, build_serving_space
from .trial import evaluate, trial_seed
from .trial_log import TrialLog, git_commit, read_log
from .workload import Workload

#: header fields that must match for ``--resume`` to continue a log (budget may grow).
RESUME_KEYS = ("optimizer", "seed", "model", "gpu", "backend", "slo", "workload", "space", "enqueue")
ENQUEUED = "enqueued"  # the phase of a trial the user asked for, not the optimizer


@dataclass
class StudySpec:
    model: str
    gpu: str
    optimizer: str
    seed: int = 42
    budget: int = 15
    backend: str = "sim"
    slo: SLO = field(default_factory=SLO)
    workload: Workload = field(default_factory=Workload)
    space: SearchSpace | None = None  # None: the default space, capped for this model and GPU
    #: configs evaluated first, in order (today's production config, a known-bad one), then the optimizer's;
    #: the optimizer is told their outcomes like its own, so they are data, not a detour
    enqueue: tuple[Config, ...] = ()

    def __post_init__(self) -> None:
        if self.budget < 1:
            raise InputError(f"budget must be >= 1 trial, got {self.budget}")
        if self.space is None:
            self.space = default_space(self.model, self.gpu, self.workload)
        for i, params in enumerate(self.enqueue):
            try:
                self.space.validate(params)
            except InputError as e:
                raise InputError(f"enqueued config {i + 1}: {e}") from None

    @property
    def study_id(self) -> str:
        return f"{Path(self.model).name.lower()}_{self.gpu}_{self.backend}_{self.optimizer}_seed{self.seed}"

    def header(self) -> dict[str, Any]:
        assert self.space is not None
        return {
            "study_id": self.study_id, "optimizer": self.optimizer, "seed": self.seed, "budget": self.budget,
            "model": self.model, "gpu": self.gpu, "backend": self.backend, "slo": self.slo.to_dict(),
            "workload": self.workload.to_dict(), "space": self.space.to_dict(), "enqueue": list(self.enqueue),
            "sloguard_version": __version__, "git_commit": git_commit(),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }


def default_space(model: str, gpu: str, workload: Workload | None = None) -> SearchSpace:
    """The 8-knob space with ``max_model_len`` bounded by the GPU's KV budget and the workload's longest request."""
    shape, profile = resolve_model(model), get_gpu(gpu)
    cap = min(shape.max_position_embeddings, kv_budget_tokens(shape, profile, 0.95))
    floor = max((r.prompt_len + r.output_len for r in workload.requests()), default=0) if workload else None
    return build_serving_space(max_model_len_cap=cap, max_model_len_floor=floor)


def outcome_of(record: Mapping[str, Any]) -> Outcome:
    return Outcome(status=record["status"], utility=record.get("utility"), crash_class=record.get("crash_class"),
                   metrics=record.get("metrics"), slo_usage=record.get("slo_usage"))


@dataclass
class StudyResult:
    log_path: Path
    header: dict[str, Any]
    trials: list[dict[str, Any]]
    resumed_from: int = 0

    @property
    def best(self) -> dict[str, Any] | None:
        return incumbent(self.trials)

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in ("ok", "slo_violation", "crash", "error")}
        for t in self.trials:
            out[t["status"]] += 1
        return out

    @property
    def crash_waste(self) -> float:
        """Fraction of the study's GPU-seconds spent on crashed trials."""
        total = sum(t.get("gpu_seconds") or 0.0 for t in self.trials)
        crashed = sum(t.get("gpu_seconds") or 0.0 for t in self.trials if t["status"] == "crash")
        return crashed / total if total else 0.0


def log_path_for(out_dir: str | Path, spec: StudySpec) -> Path:
    return Path(out_dir) / f"{spec.study_id}.jsonl"


def run_study(
    spec: StudySpec, out_dir: str | Path, *, resume: bool = False, engine: Engine | None = None,
    on_trial: Callable[[dict[str, Any]], None] | None = None, stop_after_s: float | None = None,
) -> StudyResult:
    """Run (or continue) a study up to its budget.

    ``stop_after_s`` starts no new trial once that many seconds have passed, so a study on a machine with a
    hard time limit (a Colab session, a leased GPU) stops cleanly between trials and continues with
    ``resume=True`` later.
    """
    started = time.monotonic()
    path = log_path_for(out_dir, spec)
    header = spec.header()
    assert spec.space is not None
    prior = memory_prior(resolve_model(spec.model), get_gpu(spec.gpu))
    optimizer = make_optimizer(spec.optimizer, spec.space, spec.seed, budget=spec.budget, prior=prior)
    done: list[dict[str, Any]] = []
    if path.exists() and path.stat().st_size > 0:
        if not resume:
            raise InputError(f"trial log {str(path)!r} already exists: pass --resume to continue it, "
                             "or choose another --out")
        done = _replay(path, header, optimizer)
    log = TrialLog(path, header)
    engine = engine or make_engine(spec.backend, resolve_model(spec.model), get_gpu(spec.gpu))
    for n in range(len(done), spec.budget):
        if stop_after_s is not None and time.monotonic() - started > stop_after_s:
            break
        proposal = Proposal(dict(spec.enqueue[n]), ENQUEUED) if n < len(spec.enqueue) else optimizer.ask()
        config = spec.space.finalize(proposal.params)
        rec = evaluate(engine, config, spec.workload, spec.slo, trial_seed(spec.seed, n))
        rec = {"study_id": spec.study_id, "trial": n, "seed": spec.seed, "optimizer": spec.optimizer,
               "phase": proposal.phase, "params": proposal.params, **rec, "backend": spec.backend,
               "engine_version": rec.get("engine_version") or engine.describe()["engine_version"],
               "gpu": spec.gpu, "model": spec.model, "git_commit": header["git_commit"],
               "finished": datetime.now(UTC).isoformat(timespec="seconds")}
        log.append_trial(rec)  # durable before the optimizer learns of it
        optimizer.tell(proposal.params, outcome_of(rec))
        if on_trial:
            on_trial(rec)
    contents = read_log(path)  # the log, not memory, is the study's record
    return StudyResult(path, contents.header, contents.trials, resumed_from=len(done))


def _replay(path: Path, header: Mapping[str, Any], optimizer: Optimizer) -> list[dict[str, Any]]:
    contents = read_log(path)
    for key in RESUME_KEYS:
        logged = contents.header.get(key, [] if key == "enqueue" else None)  # logs from before --enqueue
        if key == "workload" and logged is not None:  # fields added since the log was written take defaults
            logged = Workload.from_dict(logged).to_dict()
        if _norm(logged) != _norm(header.get(key)):
            raise InputError(f"cannot resume {str(path)!r}: its {key} is {contents.header.get(key)!r}, "
                             f"this run asks for {header.get(key)!r}")
    for i, rec in enumerate(contents.trials):
        if rec.get("trial") != i:
            raise InputError(f"cannot resume {str(path)!r}: record {i} is trial {rec.get('trial')!r}; "
                             "the log has a gap or a duplicate")
        optimizer.tell(rec["params"], outcome_of(rec))
    return contents.trials


def _norm(value: Any) -> Any:
    """Compare header values as they round-trip through JSON (tuples become lists, inf becomes null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _norm(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_norm(v) for v in value]
    return value
