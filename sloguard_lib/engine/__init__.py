"""Backends behind the one :class:`~sloguard_lib.engine.base.Engine` protocol, chosen by name."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..errors import InputError
from ..hardware import GpuProfile, ModelShape, has_gpu
from .base import CRASH_CLASSES, Engine, EngineCrash, Server, ServerInfo
from .replay import ReplayEngine
from .sim import SimEngine
from .vllm import VllmEngine

#: (model, gpu, backend options) -> engine; each backend reads only the options it knows (``data`` for replay,
#: ``load_procs`` for vllm)
EngineFactory = Callable[[ModelShape, GpuProfile, Mapping[str, Any]], Engine]

BACKENDS: dict[str, EngineFactory] = {
    "sim": lambda model, gpu, opts: SimEngine(model, gpu),
    "vllm": lambda model, gpu, opts: VllmEngine(model, gpu, load_procs=opts.get("load_procs", 1)),
    "replay": lambda model, gpu, opts: ReplayEngine(model, gpu, opts.get("data")),
}


def default_backend() -> str:
    """``vllm`` on a machine with a GPU, else the embedded simulator."""
    return "vllm" if has_gpu() else "sim"


def make_engine(backend: str, model: ModelShape, gpu: GpuProfile, options: Mapping[str, Any] | None = None) -> Engine:
    try:
        factory = BACKENDS[backend]
    except KeyError:
        raise InputError(f"unknown backend {backend!r}; available: {', '.join(BACKENDS)}") from None
    return factory(model, gpu, options or {})


__all__ = ["BACKENDS", "CRASH_CLASSES", "Engine", "EngineCrash", "Server", "ServerInfo", "default_backend",
           "make_engine"]
