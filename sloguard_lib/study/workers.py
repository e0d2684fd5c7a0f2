"""Where a study's trials run: one at a time in this process (the default), side by side in Ray actors, or on a
simulated clock (``VirtualPool``: N GPUs of the sim, for ``benchmarks/parallel.py``).

The runner (:mod:`sloguard_lib.study.runner`) stays the one driver: it asks, submits a trial to a pool, takes the next
finished record, logs it (fsync) and tells the optimizer. A pool only evaluates configs, so the log's guarantees
are the runner's with any number of workers: one writer, a record durable before its tell, nothing logged twice.

``RayPool`` holds ``workers`` Ray actors, each with its own engine: ``num_gpus`` GPUs per actor on a real
backend (Ray sets ``CUDA_VISIBLE_DEVICES``; a fraction shares one GPU), none on the sim. ``ray_address`` joins a
running cluster (trials are placed on its GPU nodes); without it Ray starts a local one and stops it at the end.
A worker that dies mid-trial (its process, its node) is an infrastructure fault, never a config crash: the
trial runs again on a fresh actor, and only after ``MAX_ATTEMPTS`` lost attempts is it logged as an ``error``.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sloguard_lib.engine import Engine, reaper
from sloguard_lib.errors import InputError
from sloguard_lib.measure.capacity import CapacitySearch
from sloguard_lib.measure.early_stop import StopRule
from sloguard_lib.measure.slo import SLO
from sloguard_lib.measure.workload import Workload
from sloguard_lib.study.space import Config
from sloguard_lib.study.trial import evaluate

MAX_ATTEMPTS = 3  # a trial whose worker died this many times is logged as an infrastructure error
CLOSE_GRACE_S = 30.0  # for interrupted trials to close their servers, and for engines to close


@dataclass(frozen=True)
class Job:
    trial: int
    config: Config
    seed: int  # the trial's load seed (trial.trial_seed)
    stop: StopRule | None = None  # early stop, with the incumbent's goodput when it was submitted
    capacity: CapacitySearch | None = None  # objective capacity: the search, with its start level

    def run(self, engine: Engine, workload: Workload, slo: SLO) -> dict[str, Any]:
        """The trial on ``engine``: its ``evaluate`` record, the server log named after the trial."""
        return evaluate(engine, self.config, workload, slo, self.seed, label=f"trial{self.trial:03d}",
                        stop=self.stop, capacity=self.capacity)


class Pool(Protocol):
    slots: int  # trials that may run at once

    def submit(self, job: Job) -> None: ...

    def next_result(self) -> tuple[Job, dict[str, Any]]:
        """Block until a submitted trial has finished; its job and ``evaluate`` record."""
        ...

    def close(self) -> None: ...


class InlinePool:
    """One trial at a time, here: the sequential study, with no Ray imported."""

    slots = 1

    def __init__(self, engine: Engine, workload: Workload, slo: SLO) -> None:
        self.engine, self.workload, self.slo = engine, workload, slo
        self.job: Job | None = None

    def submit(self, job: Job) -> None:
        assert self.job is None, "one trial at a time"
        self.job = job

    def next_result(self) -> tuple[Job, dict[str, Any]]:
        job, self.job = self.job, None
        assert job is not None
        return job, job.run(self.engine, self.workload, self.slo)

    def close(self) -> None:
        self.job = None


class VirtualPool:
    """``workers`` GPUs on a simulated clock, for what-if runs on the sim (``benchmarks/parallel.py``): each trial
    is evaluated here at once and finishes ``gpu_seconds`` (the sim's simulated start-up + load) after it was
    submitted; results come back in the order of those finish times. Records carry ``virtual_start_s`` and
    ``virtual_end_s``: the study's wall clock had it run on that many GPUs."""

    def __init__(self, engine: Engine, workload: Workload, slo: SLO, workers: int) -> None:
        self.engine, self.workload, self.slo, self.slots = engine, workload, slo, workers
        self.now = 0.0
        self.running: list[tuple[float, int, Job, dict[str, Any]]] = []  # a heap on the finish time

    def submit(self, job: Job) -> None:
        rec = job.run(self.engine, self.workload, self.slo)
        end = self.now + (rec.get("gpu_seconds") or 0.0)
        heapq.heappush(self.running, (end, job.trial, job, rec | {"virtual_start_s": self.now, "virtual_end_s": end}))

    def next_result(self) -> tuple[Job, dict[str, Any]]:
        self.now, _, job, rec = heapq.heappop(self.running)
        return job, rec

    def close(self) -> None:
        self.running = []


class TrialWorker:
    """The body of one Ray actor: an engine of its own, built where the actor runs (its GPU, its disk)."""

    def __init__(self, make: Callable[[], Engine], done: Sequence[Mapping[str, Any]], workload: Workload,
                 slo: SLO) -> None:
        self.engine, self.workload, self.slo = make(), workload, slo
        self.engine.restore(done)

    def run(self, job: Job) -> dict[str, Any]:
        rec = job.run(self.engine, self.workload, self.slo)
        import ray

        ctx = ray.get_runtime_context()
        return rec | {"engine_version": rec.get("engine_version") or self.engine.describe()["engine_version"],
                      "worker": {"node": ctx.get_node_id(), "pid": os.getpid(),
                                 "gpus": [str(g) for g in ray.get_gpu_ids()]}}

    def close(self) -> None:
        self.engine.close()


@contextlib.contextmanager
def ray_session(workers: int, address: str | None, pid_dir: Path | None) -> Iterator[Any]:
    """Ray, connected: to the cluster at ``address``, or to a local one started here (and stopped at the end).

    ``pid_dir``: where a local Ray's processes are recorded while it runs. Ray ends its GCS and raylet with a
    SIGKILLed driver but not its agents (seen: ``DashboardAgent`` and ``RuntimeEnvAgent`` still alive minutes
    later), so the next run ends those (:func:`~.engine.reaper.reap_processes`)."""
    try:
        import ray
    except ImportError:
        raise InputError("--workers needs Ray: pip install 'sloguard[ray]'") from None
    if pid_dir:
        reaper.reap_processes(pid_dir)
    if ray.is_initialized():  # a caller's own session (a notebook that ran ray.init): use it, leave it running
        yield ray
        return
    # "local": a cluster of our own, even where a killed run left one that ray.init would join
    ray.init(address=address or "local", num_cpus=None if address else max(workers, os.cpu_count() or 1),
             include_dashboard=False, log_to_driver=False, configure_logging=False)
    pid_file = pid_dir / "ray_local.pids" if pid_dir and not address else None
    if pid_file:
        pid_file.parent.mkdir(parents=True, exist_ok=True)
        reaper.record_processes(pid_file, reaper.descendants(os.getpid()))
    try:
        yield ray
    finally:
        ray.shutdown()
        if pid_file:
            pid_file.unlink(missing_ok=True)


def check_gpus(ray: Any, workers: int, num_gpus: float) -> None:
    """Refuse what the cluster cannot hold: a worker beyond its GPUs would wait for one forever."""
    have = float(ray.cluster_resources().get("GPU", 0.0))
    if num_gpus and have < workers * num_gpus:
        raise InputError(f"{workers} workers at {num_gpus:g} GPU each need {workers * num_gpus:g} GPUs; this Ray "
                         f"cluster has {have:g} (lower --workers or --gpus-per-worker)")


class RayPool:
    def __init__(self, make: Callable[[], Engine], done: Sequence[Mapping[str, Any]], workload: Workload, slo: SLO,
                 *, workers: int, num_gpus: float = 0.0, address: str | None = None,
                 pid_dir: Path | None = None) -> None:
        self.stack = contextlib.ExitStack()
        self.ray, self.slots = self.stack.enter_context(ray_session(workers, address, pid_dir)), workers
        try:
            check_gpus(self.ray, workers, num_gpus)
        except InputError:
            self.stack.close()
            raise
        remote = self.ray.remote(num_cpus=0 if num_gpus else 1, num_gpus=num_gpus, max_restarts=0)
        self.actor_class = remote(TrialWorker)
        self.args = (make, list(done), workload, slo)
        self.running: dict[Any, tuple[Job, Any, int]] = {}  # result ref -> (job, actor, attempt)
        self.idle = [self._actor() for _ in range(workers)]

    def _actor(self) -> Any:
        return self.actor_class.remote(*self.args)

    def submit(self, job: Job, attempt: int = 1) -> None:
        actor = self.idle.pop() if self.idle else self._actor()
        self.running[actor.run.remote(job)] = (job, actor, attempt)

    def next_result(self) -> tuple[Job, dict[str, Any]]:
        from ray.exceptions import RayActorError, WorkerCrashedError

        while True:
            (ref,), _ = self.ray.wait(list(self.running), num_returns=1)
            job, actor, attempt = self.running.pop(ref)
            t0 = time.perf_counter()
            try:
                rec: dict[str, Any] = self.ray.get(ref)
            except (RayActorError, WorkerCrashedError) as e:  # the worker, not the config, failed
                if getattr(e, "actor_init_failed", False):  # its engine cannot be built there: no retry helps
                    raise InputError(f"a worker could not build its engine: {str(e).splitlines()[-1]}") from None
                lost = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                if attempt < MAX_ATTEMPTS:
                    self.submit(job, attempt + 1)  # on a fresh actor: the dead one is not reused
                    continue
                return job, {"config": job.config, "status": "error", "crash_class": None,
                             "crash_message": f"worker lost on {attempt} attempts; last: {lost}", "metrics": {},
                             "utility": None, "violated": [], "gpu_seconds": 0.0,
                             "wall_s": time.perf_counter() - t0, "worker_attempts": attempt}
            self.idle.append(actor)
            return job, rec | ({"worker_attempts": attempt} if attempt > 1 else {})

    def close(self) -> None:
        """Interrupt the running trials (Ray raises KeyboardInterrupt in them, so ``evaluate`` closes their servers;
        they are not logged and ``--resume`` runs them again), close every engine (a real one stops its spare),
        then end the actors, and Ray itself if we started it."""
        for ref in self.running:
            self.ray.cancel(ref)
        if self.running:
            self.ray.wait(list(self.running), num_returns=len(self.running), timeout=CLOSE_GRACE_S)
        actors = self.idle + [actor for _, actor, _ in self.running.values()]
        closing = [a.close.remote() for a in actors]
        self.ray.wait(closing, num_returns=len(closing), timeout=CLOSE_GRACE_S)
        for a in actors:
            self.ray.kill(a)
        self.idle, self.running = [], {}
        self.stack.close()
