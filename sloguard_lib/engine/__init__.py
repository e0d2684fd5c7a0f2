"""Backends behind the one :class:`~sloguard_lib.engine.base.Engine` protocol, chosen by name."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sloguard_lib.engine.base import CRASH_CLASSES, Engine, EngineCrash, Server, ServerInfo
from sloguard_lib.engine.replay import ReplayEngine
from sloguard_lib.engine.sim import SimEngine
from sloguard_lib.engine.vllm import VllmEngine
from sloguard_lib.errors import InputError
from sloguard_lib.hardware import GPUS, GpuProfile, ModelShape, detect_gpu_name, detect_gpu_profile, get_gpu, has_gpu

#: (model, gpu, backend options) -> engine; each backend reads only the options it knows (``data`` for replay,
#: ``load_procs``, ``launcher``, ``log_dir`` and the ``*_timeout_s`` for vllm)
EngineFactory = Callable[[ModelShape, GpuProfile, Mapping[str, Any]], Engine]

BACKENDS: dict[str, EngineFactory] = {
    "sim": lambda model, gpu, opts: SimEngine(model, gpu),
    "vllm": lambda model, gpu, opts: VllmEngine(
        model, gpu, load_procs=opts.get("load_procs", 1), log_dir=opts.get("log_dir", "results/server_logs"),
        launcher=opts.get("launcher", "warm"), startup_timeout_s=opts.get("startup_timeout_s", 900.0),
        stall_timeout_s=opts.get("stall_timeout_s", 60.0), load_timeout_s=opts.get("load_timeout_s", 1800.0)),
    "replay": lambda model, gpu, opts: ReplayEngine(model, gpu, opts.get("data")),
}


#: the backends whose servers run on a GPU: a worker of theirs reserves one (workers.py)
ON_GPU = frozenset({"vllm"})


def default_backend() -> str:
    """``vllm`` on a machine with a GPU, else the embedded simulator."""
    return "vllm" if has_gpu() else "sim"


def placement(backend: str | None, gpu: str | None) -> tuple[str, str]:
    """(backend, GPU profile) for a study or a bench run, defaults filled in.

    ``sim`` and ``replay`` model whatever GPU is asked for (default: this machine's, else the seed's Colab
    A100-40GB). ``vllm`` measures the card it runs on, so its profile is the detected one (``cpu`` for the
    CPU build) and a different ``--gpu`` is an error: records that said ``a100-40gb`` for a run on an L4
    (or on the CPU) were wrong data, not a choice.
    """
    backend = backend or default_backend()
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; available: {', '.join(BACKENDS)}")
    name = detect_gpu_name()  # one nvidia-smi call (each costs ~0.1-1 s at start-up)
    detected = detect_gpu_profile(name) if name else None
    if backend != "vllm":
        return backend, get_gpu(gpu).name if gpu else (detected.name if detected else "a100-40gb")
    here = "cpu" if name is None else (detected.name if detected else None)
    if here is None:
        if gpu is None:
            raise InputError(f"this machine's GPU {name!r} has no profile; pass --gpu with the closest one "
                             f"({', '.join(GPUS)})")
        return backend, get_gpu(gpu).name
    if gpu is not None and get_gpu(gpu).name != here:
        raise InputError(f"--gpu {gpu}: the vllm backend measures the card it runs on, and this machine has "
                         f"{name or 'no GPU (the CPU build of vLLM)'} ({here}); drop --gpu, or use --backend sim "
                         f"to simulate {gpu}")
    return backend, here


def make_engine(backend: str, model: ModelShape, gpu: GpuProfile, options: Mapping[str, Any] | None = None) -> Engine:
    try:
        factory = BACKENDS[backend]
    except KeyError:
        raise InputError(f"unknown backend {backend!r}; available: {', '.join(BACKENDS)}") from None
    return factory(model, gpu, options or {})


__all__ = ["BACKENDS", "CRASH_CLASSES", "ON_GPU", "Engine", "EngineCrash", "Server", "ServerInfo", "default_backend",
           "make_engine", "placement"]
