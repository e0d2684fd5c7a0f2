"""The tuning loop: ask -> launch -> load -> metrics -> SLO -> log (fsync) -> tell, with exact resume.

With ``workers`` > 1 the same loop keeps that many trials in flight (:mod:`sloguard_lib.study.workers`, on Ray): each
ask sees the configs still running (``Optimizer.ask(pending)``), records are logged in the order trials finish,
and each says which trials were pending when it was proposed (``pending``) and how many records had been told
before (``told``). Replaying the log in its order rebuilds the optimizer the driver had; trials in flight when
the driver died have no record, and ``--resume`` proposes those trial numbers again.

Resume replays every logged trial into a fresh optimizer (``tell`` only) and continues with the trial
numbers not yet logged. Because the log is written before ``tell`` and optimizers are history-deterministic, a study
killed at any instant and resumed produces the same trials as one that was never interrupted: none lost,
none repeated. The study holds its log's lock throughout (:func:`~sloguard_lib.study.trial_log.exclusive`), so a
second writer is refused instead of duplicating trials. An interrupt (Ctrl-C, SIGTERM, SIGHUP: see
:mod:`sloguard_lib.study.interrupts`) propagates out of ``run_study`` after the trial's server is closed; the trial
in flight is not logged, and ``--resume`` runs it again.
"""

from __future__ import annotations

import functools
import json
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sloguard_lib import __version__
from sloguard_lib.engine import ON_GPU, Engine, make_engine
from sloguard_lib.engine.calibration import SimCalibration
from sloguard_lib.errors import InputError
from sloguard_lib.hardware import get_gpu, kv_budget_tokens, memory_prior, resolve_model
from sloguard_lib.measure.capacity import CapacitySearch, start_from
from sloguard_lib.measure.early_stop import StopRule
from sloguard_lib.measure.slo import SLO
from sloguard_lib.measure.workload import Workload
from sloguard_lib.optimizers import Optimizer, Outcome, Proposal, make_optimizer
from sloguard_lib.study.incumbent import VALIDATED, incumbent, ranked, recommend
from sloguard_lib.study.screen import ScreenedOptimizer
from sloguard_lib.study.space import Config, SearchSpace, build_serving_space, config_key
from sloguard_lib.study.trial import trial_seed
from sloguard_lib.study.trial_log import LogContents, TrialLog, exclusive, git_commit, holds_no_record, read_log
from sloguard_lib.study.workers import InlinePool, Job, Pool, RayPool, VirtualPool

#: header fields that must match for ``--resume`` to continue a log (budget may grow).
RESUME_KEYS = ("optimizer", "seed", "model", "gpu", "backend", "slo", "workload", "space", "enqueue", "early_stop",
               "validate", "objective", "capacity_target", "capacity_max", "screen")
#: what a header written before a key existed meant by it
LOGGED_DEFAULTS: dict[str, Any] = {"enqueue": [], "early_stop": False, "validate": 0, "objective": "goodput"}
OBJECTIVES = ("goodput", "capacity")
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
    #: after the budget, re-measure the ``FINALISTS`` best configs this many times each on fresh servers and
    #: recommend the one with the best lower bound over those (:func:`incumbent.recommend`)
    validate: int = 0
    #: "goodput" at the workload's load, or "capacity": the highest load each config sustains with
    #: ``capacity_target`` of its requests within the SLO (:mod:`sloguard_lib.measure.capacity`)
    objective: str = "goodput"
    capacity_target: float = 0.99
    capacity_max: float | None = None  # the highest level searched (None: capacity.DEFAULT_MAX)
    #: "sim": each real trial's config chosen by a simulator screen re-fitted to the real trials so far
    #: (:mod:`sloguard_lib.study.screen`), ``screen_trials`` sim trials before each; ``screen_cal`` the screen's
    #: starting calibration (None: the packaged one; the sim benchmark passes a deliberately wrong one)
    screen: str | None = None
    screen_trials: int = 60
    screen_cal: SimCalibration | None = None
    #: end a trial's load once it cannot meet the SLO or beat the incumbent (:mod:`sloguard_lib.measure.early_stop`)
    early_stop: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.budget <= MAX_BUDGET:
            raise InputError(f"budget must be 1..{MAX_BUDGET} trials, got {self.budget}")
        check_seed(self.seed)
        if self.objective not in OBJECTIVES:
            raise InputError(f"objective {self.objective!r}: choose one of {', '.join(OBJECTIVES)}")
        CapacitySearch(self.capacity_target, max_level=self.capacity_max)  # checks them
        if self.screen not in (None, "sim"):
            raise InputError(f"--screen {self.screen!r}: the one screen is sim")
        if not 1 <= self.screen_trials <= MAX_BUDGET:
            raise InputError(f"--screen-trials must be 1..{MAX_BUDGET}, got {self.screen_trials}")
        if not 0 <= self.validate <= MAX_VALIDATE:
            raise InputError(f"--validate must be 0..{MAX_VALIDATE} re-measurements per finalist, got {self.validate}")
        if self.space is None:
            self.space = default_space(self.model, self.gpu, self.workload)
        for i, params in enumerate(self.enqueue):
            try:
                self.space.validate(params)
            except InputError as e:
                raise InputError(f"enqueued config {i + 1}: {e}") from None

    @property
    def study_id(self) -> str:
        objective = "_capacity" if self.objective == "capacity" else ""
        return f"{Path(self.model).name.lower()}_{self.gpu}_{self.backend}_{self.optimizer}{objective}_seed{self.seed}"

    def header(self) -> dict[str, Any]:
        assert self.space is not None
        return {
            "study_id": self.study_id, "optimizer": self.optimizer, "seed": self.seed, "budget": self.budget,
            "model": self.model, "gpu": self.gpu, "backend": self.backend, "slo": self.slo.to_dict(),
            "workload": self.workload.to_dict(), "space": self.space.to_dict(), "enqueue": list(self.enqueue),
            "early_stop": self.early_stop, "validate": self.validate, "objective": self.objective,
            **({"capacity_target": self.capacity_target, "capacity_max": self.capacity_max}
               if self.objective == "capacity" else {}),
            **({"screen": {"engine": self.screen, "trials": self.screen_trials,
                           "calibration": asdict(self.screen_cal) if self.screen_cal else "default"}}
               if self.screen else {}),
            "sloguard_version": __version__, "git_commit": git_commit(),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }


#: a real trial costs ~35 s, a sim trial ~0.1 s: 100,000 trials is days of GPU time, and a typo beyond it would
#: otherwise run until killed
MAX_BUDGET = 100_000
MAX_SEED = 2**32 - 1


def check_seed(seed: int) -> None:
    if not 0 <= seed <= MAX_SEED:
        raise InputError(f"seed must be 0..{MAX_SEED} (the samplers' seed range), got {seed}")


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
        """The recommendation, with its 95 % interval (:func:`incumbent.recommend`)."""
        return recommend(self.trials)

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


def server_log_dir(out_dir: str | Path, spec: StudySpec) -> Path:
    """Where a backend that starts processes keeps their logs: beside the study's own log, one folder a study."""
    return Path(out_dir) / "server_logs" / spec.study_id


MAX_WORKERS = 256  # trials at once; beyond any GPU box or cluster we have heard of a tuner using
MAX_GPUS_PER_WORKER = 64  # a tensor-parallel server spans at most a few nodes
RAY_ADDRESS = re.compile(r"auto|(ray://)?[A-Za-z0-9.\-]{1,253}:\d{1,5}")  # what ray.init(address=...) takes


@dataclass(frozen=True)
class Parallel:
    """How many trials run at once, and where: ``workers`` Ray actors (``num_gpus`` each; 0 on the sim) on the
    cluster at ``ray_address``, or on a local Ray that the study starts and stops. ``make_engine`` builds each
    worker's engine where it runs (default: the study's backend)."""

    workers: int = 1
    num_gpus: float | None = None  # None: 1 on a real backend, 0 on the sim
    ray_address: str | None = None
    make_engine: Callable[[], Engine] | None = None
    virtual: bool = False  # no Ray: the workers on a simulated clock (workers.VirtualPool), for the sim's what-ifs

    def __post_init__(self) -> None:
        if not 1 <= self.workers <= MAX_WORKERS:
            raise InputError(f"--workers must be 1..{MAX_WORKERS}, got {self.workers}")
        if self.num_gpus is not None and not 0 <= self.num_gpus <= MAX_GPUS_PER_WORKER:  # also NaN
            raise InputError(f"--gpus-per-worker must be 0..{MAX_GPUS_PER_WORKER}, got {self.num_gpus}")
        if self.ray_address is not None and not RAY_ADDRESS.fullmatch(self.ray_address):
            raise InputError(f"--ray-address {self.ray_address[:80]!r}: expected auto, HOST:PORT or ray://HOST:PORT")

    @property
    def on_ray(self) -> bool:
        return not self.virtual and (self.workers > 1 or self.ray_address is not None)


def run_study(
    spec: StudySpec, out_dir: str | Path, *, resume: bool = False, engine: Engine | None = None,
    on_trial: Callable[[dict[str, Any]], None] | None = None, stop_after_s: float | None = None,
    parallel: Parallel | None = None,
) -> StudyResult:
    """Run (or continue) a study up to its budget.

    ``stop_after_s`` starts no new trial once that many seconds have passed, so a study on a machine with a
    hard time limit (a Colab session, a leased GPU) stops cleanly between trials and continues with
    ``resume=True`` later; trials already running finish and are logged.
    """
    started = time.monotonic()
    path = log_path_for(out_dir, spec)
    with exclusive(path):
        return _run(spec, path, resume, engine, on_trial, started, stop_after_s, parallel or Parallel())


def _engine_factory(spec: StudySpec, path: Path) -> Callable[[], Engine]:
    return functools.partial(make_engine, spec.backend, resolve_model(spec.model), get_gpu(spec.gpu),
                             {"log_dir": server_log_dir(path.parent, spec)})


def _pool(spec: StudySpec, path: Path, engine: Engine | None, done: list[dict[str, Any]],
          parallel: Parallel) -> tuple[Pool, Engine | None]:
    """The pool the trials run in, and the engine of this process (a sequential study's), if any."""
    if not parallel.on_ray:
        engine = engine or _engine_factory(spec, path)()
        engine.restore(done)
        if parallel.virtual:
            return VirtualPool(engine, spec.workload, spec.slo, parallel.workers), engine
        return InlinePool(engine, spec.workload, spec.slo), engine
    if engine is not None:
        raise InputError("an engine object runs in this process only: pass Parallel.make_engine for workers")
    gpus = parallel.num_gpus if parallel.num_gpus is not None else float(spec.backend in ON_GPU)
    make = parallel.make_engine or _engine_factory(spec, path)
    return RayPool(make, done, spec.workload, spec.slo, workers=parallel.workers, num_gpus=gpus,
                   address=parallel.ray_address, pid_dir=server_log_dir(path.parent, spec)), None


def _run(spec: StudySpec, path: Path, resume: bool, engine: Engine | None,
         on_trial: Callable[[dict[str, Any]], None] | None, started: float, stop_after_s: float | None,
         parallel: Parallel) -> StudyResult:
    header = spec.header()
    assert spec.space is not None
    prior = memory_prior(resolve_model(spec.model), get_gpu(spec.gpu))
    optimizer = make_optimizer(spec.optimizer, spec.space, spec.seed, budget=spec.budget, prior=prior)
    if spec.screen:
        space = spec.space
        optimizer = ScreenedOptimizer(
            lambda s: make_optimizer(spec.optimizer, space, s, budget=spec.budget, prior=prior), space, spec.seed,
            model=resolve_model(spec.model), gpu=get_gpu(spec.gpu), workload=spec.workload, slo=spec.slo,
            cal=spec.screen_cal, screen_trials=spec.screen_trials,
            capacity=CapacitySearch(spec.capacity_target, max_level=spec.capacity_max)
            if spec.objective == "capacity" else None)
    done: list[dict[str, Any]] = []
    logged_budget = spec.budget
    if path.exists() and (path.is_dir() or not holds_no_record(path)):
        if not resume:
            raise InputError(f"trial log {str(path)!r} already exists: pass --resume to continue it, "
                             "or choose another --out")
        done, logged_budget = _replay(path, header, optimizer)
    log = TrialLog(path, header)
    if spec.budget > logged_budget:
        log.extend(spec.budget, len(done), datetime.now(UTC).isoformat(timespec="seconds"))
    logged = {rec["trial"] for rec in done}
    if nothing_left(spec, done):  # no engine, so no GPU: a log measured elsewhere (the CLI on a lent GPU) reads here
        contents = read_log(path)
        return StudyResult(path, contents.header, contents.trials, resumed_from=len(done))
    pool, own_engine = _pool(spec, path, engine, done, parallel)
    in_flight: dict[int, tuple[Proposal, list[int], int]] = {}  # trial -> (proposal, pending then, told then)
    history = list(done)  # every record told, in order

    def upcoming() -> Iterator[tuple[int, Proposal] | None]:
        """The trials to run, in order (numbers a killed driver left first); None while the next ones depend on
        trials still running."""
        for n in range(spec.budget):
            if n not in logged:
                pending = [p.params for p, _, _ in in_flight.values()]
                yield n, (Proposal(dict(spec.enqueue[n]), ENQUEUED) if n < len(spec.enqueue)
                          else optimizer.ask(pending))
        while in_flight:  # the finalists are those of every trial
            yield None
        for n, params in validation_plan(spec, history):
            if n not in logged:
                yield n, Proposal(params, VALIDATED)

    todo = upcoming()
    try:
        while True:
            while len(in_flight) < pool.slots and not (
                    stop_after_s is not None and time.monotonic() - started > stop_after_s):
                item = next(todo, None)
                if item is None:
                    break
                n, proposal = item
                config = spec.space.finalize(proposal.params)
                pool.submit(Job(n, config, trial_seed(spec.seed, n), stop_rule(spec, history, config),
                                capacity_search(spec, history, config)))
                in_flight[n] = (proposal, sorted(in_flight), len(history))
            if not in_flight:
                break
            job, rec = pool.next_result()
            proposal, pending_then, told_then = in_flight.pop(job.trial)
            rec = {"study_id": spec.study_id, "trial": job.trial, "seed": spec.seed, "optimizer": spec.optimizer,
                   "phase": proposal.phase, "params": proposal.params,
                   **({"screen": proposal.screen} if proposal.screen else {}), **rec, "backend": spec.backend,
                   "engine_version": rec.get("engine_version") or (own_engine.describe()["engine_version"]
                                                                     if own_engine else None),
                   "gpu": spec.gpu, "model": spec.model, "git_commit": header["git_commit"],
                   "finished": datetime.now(UTC).isoformat(timespec="seconds"),
                   **({"pending": pending_then, "told": told_then} if pool.slots > 1 else {})}
            try:
                log.append_trial(rec)  # durable before the optimizer learns of it
            except OSError as e:  # disk full, read-only remount: stop, and hand the measured record to the user
                raise InputError(f"cannot append trial {job.trial} to {str(path)!r}: {e.strerror or e}; the "
                                 f"{len(history)} trials before it are safe, --resume re-runs it once the log is "
                                 f"writable. Its "
                                 f"record: {json.dumps(rec, default=str)}") from None
            optimizer.tell(proposal.params, outcome_of(rec))
            history.append(rec)
            if on_trial:
                on_trial(rec)
    finally:
        pool.close()
    contents = read_log(path)  # the log, not memory, is the study's record
    return StudyResult(path, contents.header, contents.trials, resumed_from=len(done))


def nothing_left(spec: StudySpec, trials: Sequence[Mapping[str, Any]]) -> bool:
    """Whether these logged trials are the whole study: every trial of its budget, and its validations."""
    logged = {t["trial"] for t in trials}
    return all(n in logged for n in range(spec.budget)) and all(n in logged for n, _ in validation_plan(spec, trials))


def is_complete(spec: StudySpec, out_dir: str | Path) -> bool:
    """Whether ``out_dir`` holds this study's whole log: resuming it measures nothing, so needs no GPU."""
    path = log_path_for(out_dir, spec)
    return path.is_file() and nothing_left(spec, read_log(path).trials)


FINALISTS = 3  # configs re-measured by --validate: the top three of a 15-trial study hold its near-ties
MAX_VALIDATE = 100


def validation_plan(spec: StudySpec, history: Sequence[Mapping[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """``--validate K``: the study's ``FINALISTS`` best configs (by mean utility, :func:`incumbent.ranked`), each
    re-measured K times on fresh servers, interleaved (finalist 1, 2, 3, 1, 2, 3, ...) so that drift in the
    machine's speed falls on all alike; trial numbers follow the budget's."""
    if not spec.validate:
        return []
    finals = [rs[0]["params"] for _, rs in ranked([t for t in history if t.get("phase") != VALIDATED])][:FINALISTS]
    return [(spec.budget + j * len(finals) + f, dict(params))
            for j in range(spec.validate) for f, params in enumerate(finals)]


def capacity_search(spec: StudySpec, history: Sequence[Mapping[str, Any]], config: Config) -> CapacitySearch | None:
    """A capacity study's next search, starting where the configs searched so far predict this one's capacity."""
    if spec.objective != "capacity":
        return None
    assert spec.space is not None
    return CapacitySearch(spec.capacity_target, start=start_from(history, config, spec.space),
                          max_level=spec.capacity_max)


def stop_rule(spec: StudySpec, history: list[dict[str, Any]], config: Config) -> StopRule | None:
    """The next trial's early stop: the SLO, and the incumbent's mean goodput to beat (decided by the records told
    so far, so a resumed study stops the same trials at the same requests). A config measured before is never
    stopped for the incumbent: measuring it again is the point (its mean, not one load, decides the ranking)."""
    if not spec.early_stop:
        return None
    best = incumbent(history)
    again = any(config_key(t["config"]) == config_key(config) for t in history)
    return StopRule(spec.slo, spec.workload, beat=best["mean_utility"] if best and not again else None)


def _replay(path: Path, header: Mapping[str, Any], optimizer: Optimizer) -> tuple[list[dict[str, Any]], int]:
    """Tell the optimizer every logged trial, in the log's order (the order they were told); returns them and the
    budget the log last recorded. Trial numbers may have gaps (trials in flight when a parallel driver died),
    never a duplicate."""
    contents = read_log(path)
    check_same_study(path, contents, header, budget=header["budget"])
    seen: set[int] = set()
    end = header["budget"] + FINALISTS * header["validate"]
    for i, rec in enumerate(contents.trials):
        n = rec.get("trial")
        if not isinstance(n, int) or n in seen or not 0 <= n < end:
            raise InputError(f"cannot resume {str(path)!r}: record {i} is trial {n!r}, a duplicate or out of range")
        seen.add(n)
        optimizer.tell(rec["params"], outcome_of(rec))
    return contents.trials, int(contents.header.get("budget") or 0)


def check_same_study(path: Path, contents: LogContents, header: Mapping[str, Any], *, budget: int) -> None:
    """Raise, naming the first differing field, unless the log is this study (its budget may grow)."""
    for key in RESUME_KEYS:
        logged = contents.header.get(key, LOGGED_DEFAULTS.get(key))
        if key == "workload" and logged is not None:  # fields added since the log was written take defaults
            logged = Workload.from_dict(logged).to_dict()
        if key == "slo" and logged is not None:
            logged = SLO.from_dict(logged).to_dict()
        where = first_difference(_norm(logged), _norm(header.get(key)), key)
        if where is not None:
            field_name, was, asked = where
            raise InputError(f"cannot resume {str(path)!r}: its {field_name} is {was!r}, this run asks for "
                             f"{asked!r} (a different study: use another --out, or the log's settings)")
    held = sum(t.get("phase") != VALIDATED for t in contents.trials)
    if held > budget:
        raise InputError(f"cannot resume {str(path)!r}: it already holds {held} trials, more than the budget of "
                         f"{budget}")
    if budget > int(contents.header.get("budget") or 0) and held < len(contents.trials):
        raise InputError(f"cannot resume {str(path)!r} with a larger budget: its finalists were validated already "
                         "(start a new --out)")


def first_difference(a: Any, b: Any, path: str) -> tuple[str, Any, Any] | None:
    """The first place where two JSON-like values differ, as (dotted path, a's value, b's value)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in [*a, *(k for k in b if k not in a)]:
            found = first_difference(a.get(k), b.get(k), f"{path}.{k}")
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found = first_difference(x, y, f"{path}[{i}]")
            if found:
                return found
        return None
    return None if a == b else (path, a, b)


def _norm(value: Any) -> Any:
    """Compare header values as they round-trip through JSON (tuples become lists, inf becomes null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _norm(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_norm(v) for v in value]
    return value
