"""The one protocol every backend implements (``sim``, ``vllm``, ``replay``).

``Engine.launch(config)`` starts a server for one trial's knobs (for ``vllm`` a real process, for ``sim``
the memory model and start-up rules) and either returns a :class:`Server` or raises :class:`EngineCrash`
carrying vLLM's own failure text. ``Server.run_load(workload)`` drives the workload and returns raw
per-request results; metrics, SLOs and goodput are computed outside the backend, identically for all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

from sloguard_lib.measure.metrics import LoadResult, RequestResult
from sloguard_lib.measure.workload import Workload
from sloguard_lib.study.space import Config

#: Crash classes shared by every backend and by the log classifier.
CRASH_CLASSES = (
    "oom", "kv_insufficient", "cuda_error", "invalid_config", "startup_timeout",
    "runtime_hang", "server_error", "killed", "unknown",
)
CrashPhase = Literal["startup", "load"]


class EngineCrash(Exception):
    """The server failed to start, or died/hung under load. ``elapsed_s`` is GPU time the failure cost."""

    def __init__(
        self, crash_class: str, message: str, *, elapsed_s: float, phase: CrashPhase = "startup",
        log_excerpt: str = "",
    ) -> None:
        super().__init__(f"[{crash_class}] {message}")
        assert crash_class in CRASH_CLASSES, crash_class
        self.crash_class = crash_class
        self.message = message
        self.elapsed_s = elapsed_s
        self.phase = phase
        self.log_excerpt = log_excerpt or message
        self.phases: dict[str, float] = {}  # where the failed start's time went, when the backend measures it


@dataclass
class ServerInfo:
    backend: str
    engine_version: str
    gpu: str
    model: str
    start_s: float  # launch to ready; simulated seconds for ``sim``
    kv_cache_tokens: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Server(Protocol):
    info: ServerInfo

    def run_load(self, workload: Workload, until: Callable[[RequestResult], bool] | None = None) -> LoadResult:
        """Drive the workload; with ``until``, end it early once ``until`` returns True for a finished request
        (called in the order requests finish; :mod:`sloguard_lib.measure.early_stop`): the result then holds the
        requests finished by that instant and lasts until it."""
        ...

    def close(self) -> None: ...


class Engine(Protocol):
    """A backend. ``trial_seed`` makes measurement noise reproducible per trial."""

    name: str

    def launch(self, config: Config, *, trial_seed: int, label: str = "") -> Server:
        """``label`` names the trial in whatever the backend leaves on disk (the vllm backend's server log)."""
        ...

    def describe(self) -> dict[str, Any]: ...

    def restore(self, trials: Sequence[Mapping[str, Any]]) -> None:
        """Rebuild whatever state earlier trials of this study left in the engine, from their records, before a
        resumed study goes on (the sim's compile cache; a real engine's lives on disk already)."""
        ...

    def latency_floor_ms(self, workload: Workload) -> tuple[float, float]:
        """(TTFT, ITL) lower bounds in ms that no config can beat; used to reject impossible SLOs."""
        ...

    def close(self) -> None:
        """Release what the engine keeps between trials (the vllm backend's spare interpreter)."""
        ...
