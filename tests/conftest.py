from __future__ import annotations

import pytest

from sloguard_lib.engine.sim import SimEngine
from sloguard_lib.hardware import get_gpu, resolve_model


@pytest.fixture
def h100_qwen() -> SimEngine:
    return SimEngine(resolve_model("qwen2-1.5b"), get_gpu("h100-80gb"))


@pytest.fixture(autouse=True)
def _no_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("SLOGUARD_GPU_VRAM_GB", "SLOGUARD_KV_BYTES_PER_TOKEN", "SLOGUARD_MODEL_FOOTPRINT_GB"):
        monkeypatch.delenv(var, raising=False)
