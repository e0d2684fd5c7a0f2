"""Backends behind the one :class:`~sloguard_lib.engine.base.Engine` protocol, chosen by name."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import InputError
from ..hardware import GpuProfile, ModelShape, has_gpu
from .base import CRASH_CLASSES, Engine, EngineCrash, Server, ServerInfo
from .sim import SimEngine
from .vllm import VllmEngine

EngineFactory = Callable[[ModelShape, GpuProfile], Engine]

BACKENDS: dict[str, EngineFactory] = {
    "sim": lambda model, gpu: SimEngine(model, gpu),
    "vllm": lambda model, gpu: VllmEngine(model, gpu),
}


def default_backend() -> str:
    """``vllm`` on a machine with a GPU, else the embedded simulator."""
    return "vllm" if has_gpu() else "sim"


def make_engine(backend: str, model: ModelShape, gpu: GpuProfile) -> Engine:
    try:
        factory = BACKENDS[backend]
    except KeyError:
        raise InputError(f"unknown backend {backend!r}; available: {', '.join(BACKENDS)}") from None
    return factory(model, gpu)


__all__ = ["BACKENDS", "CRASH_CLASSES", "Engine", "EngineCrash", "Server", "ServerInfo", "default_backend",
           "make_engine"]
