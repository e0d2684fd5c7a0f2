"""The hierarchical search space over vLLM serving knobs.

Knobs carry vLLM's own names so a config can be passed to ``vllm serve`` unchanged. The space is
conditional: ``enable_chunked_prefill`` only exists when ``enforce_eager`` is false (vLLM 0.19 answered
500s for chunked prefill in eager mode, so the seed made it conditional and we keep that contract).
A config therefore holds exactly the *active* knobs.

Two values are derived rather than searched, because searching them only produces crashes:

* ``max_model_len``'s upper bound is capped by what the GPU's KV cache can hold at the largest
  ``gpu_memory_utilization`` (see :func:`build_serving_space`).
* ``max_num_batched_tokens`` is auto-bumped to ``max(max_num_seqs, max_model_len)`` when chunked
  prefill is off, since vLLM refuses to start otherwise. The optimizer keeps its *proposed* params; the
  *launched* config is :meth:`SearchSpace.finalize` of them. Both are logged.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml

from sloguard_lib.errors import InputError, yaml_problem
from sloguard_lib.hardware import WEIGHT_BYTES

KnobKind = Literal["int", "float", "bool", "categorical"]
Config = dict[str, Any]


@dataclass(frozen=True)
class Knob:
    """One tunable knob. ``active_if`` = (parent knob, value) makes it conditional."""

    name: str
    kind: KnobKind
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    active_if: tuple[str, Any] | None = None
    help: str = field(default="", compare=False)  # documentation only, not serialised

    def check(self) -> None:
        if self.kind in ("int", "float"):
            if self.low is None or self.high is None:
                raise InputError(f"knob {self.name!r}: numeric knob needs low and high")
            if self.low > self.high:
                raise InputError(f"knob {self.name!r}: empty range [{self.low}, {self.high}] (low > high)")
            if self.log and self.low <= 0:
                raise InputError(f"knob {self.name!r}: log-scale range must be positive, got low={self.low}")
        if self.kind == "categorical" and not self.choices:
            raise InputError(f"knob {self.name!r}: empty list of choices")

    def contains(self, value: Any) -> bool:
        if self.kind == "bool":
            return isinstance(value, bool)
        if self.kind == "categorical":
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.kind == "int" and not float(value).is_integer():
            return False
        assert self.low is not None and self.high is not None
        return self.low - 1e-9 <= float(value) <= self.high + 1e-9

    def sample(self, rng: np.random.Generator) -> Any:
        if self.kind == "bool":
            return bool(rng.integers(2))
        if self.kind == "categorical":
            return self.choices[int(rng.integers(len(self.choices)))]
        assert self.low is not None and self.high is not None
        if self.log:
            u = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        else:
            u = rng.uniform(self.low, self.high)
        return self.cast(u)

    def cast(self, value: float) -> Any:
        """Round a raw number onto this knob's grid and clip it into range."""
        assert self.low is not None and self.high is not None
        value = min(max(value, self.low), self.high)
        if self.kind == "int":
            return round(value)
        if self.step:
            value = self.low + round((value - self.low) / self.step) * self.step
            return round(min(value, self.high), 10)
        return float(value)

    @property
    def values(self) -> tuple[Any, ...]:
        """Every value of a boolean or categorical knob, in a fixed order."""
        return (False, True) if self.kind == "bool" else self.choices

    def unit(self, value: float) -> float:
        """A numeric value's position in [0, 1] across this knob's range (in log space for log knobs)."""
        assert self.low is not None and self.high is not None
        lo, hi, v = float(self.low), float(self.high), float(value)
        if self.log:
            lo, hi, v = math.log(lo), math.log(hi), math.log(v)
        return 0.0 if hi == lo else (v - lo) / (hi - lo)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.kind in ("int", "float"):
            out.update(low=self.low, high=self.high, log=self.log)
            if self.step:
                out["step"] = self.step
        if self.kind == "categorical":
            out["choices"] = list(self.choices)
        if self.active_if:
            out["active_if"] = list(self.active_if)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Knob:
        return cls(
            name=d["name"],
            kind=d["kind"],
            low=d.get("low"),
            high=d.get("high"),
            log=bool(d.get("log", False)),
            step=d.get("step"),
            choices=tuple(d.get("choices", ())),
            active_if=(d["active_if"][0], d["active_if"][1]) if d.get("active_if") else None,
        )


@dataclass(frozen=True)
class SearchSpace:
    """An ordered set of knobs; parents always precede their conditional children."""

    knobs: tuple[Knob, ...]
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for k in self.knobs:
            k.check()
            if k.active_if and k.active_if[0] not in seen:
                raise InputError(f"knob {k.name!r} depends on {k.active_if[0]!r}, which is not defined before it")
            seen.add(k.name)

    @property
    def names(self) -> list[str]:
        return [k.name for k in self.knobs]

    def knob(self, name: str) -> Knob:
        for k in self.knobs:
            if k.name == name:
                return k
        raise InputError(f"unknown knob {name!r}; known knobs: {', '.join(self.names)}")

    def is_active(self, knob: Knob, params: Mapping[str, Any]) -> bool:
        if knob.active_if is None:
            return True
        parent, value = knob.active_if
        return parent in params and params[parent] == value

    def sample(self, rng: np.random.Generator) -> Config:
        params: Config = {}
        for k in self.knobs:
            if self.is_active(k, params):
                params[k.name] = k.sample(rng)
        return params

    def validate(self, params: Mapping[str, Any]) -> None:
        """Raise :class:`InputError` naming the first knob that is unknown, missing, inactive or out of range."""
        for name in params:
            self.knob(name)
        for k in self.knobs:
            active = self.is_active(k, params)
            if active and k.name not in params:
                raise InputError(f"knob {k.name!r} is active but has no value")
            if not active and k.name in params:
                assert k.active_if is not None
                parent, value = k.active_if
                raise InputError(f"knob {k.name!r} is set but inactive (needs {parent}={value})")
            if active and not k.contains(params[k.name]):
                raise InputError(f"knob {k.name!r}: value {params[k.name]!r} outside {_describe(k)}")

    def finalize(self, params: Mapping[str, Any]) -> Config:
        """The config actually launched: params plus the auto-bump of ``max_num_batched_tokens``."""
        config = dict(params)
        chunked = config.get("enable_chunked_prefill")
        if chunked is False and "max_num_batched_tokens" in config:
            floor = max(int(config.get("max_num_seqs", 0)), int(config.get("max_model_len", 0)))
            config["max_num_batched_tokens"] = max(int(config["max_num_batched_tokens"]), floor)
        return config

    def encode(self, params: Mapping[str, Any]) -> np.ndarray:
        """A [0, 1]^d vector (log knobs in log space, inactive knobs = -1) for surrogate models."""
        out = []
        for k in self.knobs:
            if k.name not in params:
                out.append(-1.0)
            elif k.kind == "bool":
                out.append(float(params[k.name]))
            elif k.kind == "categorical":
                out.append(k.choices.index(params[k.name]) / max(1, len(k.choices) - 1))
            else:
                out.append(k.unit(params[k.name]))
        return np.asarray(out, dtype=float)

    def with_overrides(self, overrides: Mapping[str, Mapping[str, Any]]) -> SearchSpace:
        """Narrow or widen knobs: ``{"max_num_seqs": {"low": 8, "high": 64}, "quantization": {"choices": [...]}}``."""
        knobs = {k.name: k for k in self.knobs}
        for name, change in overrides.items():
            k = self.knob(name)
            if not isinstance(change, Mapping):
                raise InputError(f"knob {name!r}: override must be a mapping like {{low: 8, high: 64}}, got {change!r}")
            allowed = {"low", "high", "choices", "log"}
            bad = set(change) - allowed
            if bad:
                raise InputError(f"knob {name!r}: unknown override field(s) {sorted(bad)}; use {sorted(allowed)}")
            if "choices" in change:
                if k.kind not in ("categorical", "bool"):
                    raise InputError(f"knob {name!r}: is {k.kind}, 'choices' applies to categorical knobs")
                choices = tuple(change["choices"] or ())
                if k.kind == "bool":
                    if not choices or any(not isinstance(c, bool) for c in choices):
                        raise InputError(f"knob {name!r}: boolean choices must be a non-empty list of true/false")
                    knobs[name] = replace(k, kind="categorical", choices=tuple(dict.fromkeys(choices)))
                else:
                    unknown = [c for c in choices if name == "quantization" and c not in WEIGHT_BYTES]
                    if unknown:  # caught here, not when a trial first draws it (a log then can't be resumed)
                        raise InputError(f"knob 'quantization': unknown choice {unknown[0]!r}; known: "
                                         f"{', '.join(WEIGHT_BYTES)}")
                    knobs[name] = replace(k, choices=choices)
            if "low" in change or "high" in change:
                if k.kind not in ("int", "float"):
                    raise InputError(f"knob {name!r}: is {k.kind}; low/high apply to numeric knobs")
                low = _number(name, "low", change.get("low", k.low))
                high = _number(name, "high", change.get("high", k.high))
                knobs[name] = replace(knobs[name], low=low, high=high)
            if "log" in change:
                knobs[name] = replace(knobs[name], log=bool(change["log"]))
            knobs[name].check()
        return SearchSpace(tuple(knobs[k.name] for k in self.knobs), self.notes)

    def to_dict(self) -> dict[str, Any]:
        return {"knobs": [k.to_dict() for k in self.knobs], "notes": list(self.notes)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SearchSpace:
        return cls(tuple(Knob.from_dict(k) for k in d["knobs"]), tuple(d.get("notes", ())))


def _number(knob: str, field_name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InputError(f"knob {knob!r}: {field_name} must be a finite number, got {value!r}")
    lo, hi = DOMAINS.get(knob, (-math.inf, math.inf))
    if not lo <= value <= hi:
        raise InputError(f"knob {knob!r}: {field_name} {value} is outside what vLLM accepts ({lo}..{hi})")
    return value


def _describe(k: Knob) -> str:
    if k.kind == "categorical":
        return f"choices {list(k.choices)}"
    if k.kind == "bool":
        return "true/false"
    return f"[{k.low}, {k.high}]"


#: the values vLLM itself accepts (gpu_memory_utilization is a fraction in (0, 1]; the counts are positive), with
#: bounds far above any real GPU's so that a typo (1e8) is refused here instead of failing trials
DOMAINS: dict[str, tuple[float, float]] = {
    "max_num_seqs": (1, 1_000_000), "max_num_batched_tokens": (1, 100_000_000),
    "gpu_memory_utilization": (0.001, 1.0), "max_model_len": (1, 100_000_000)}
#: the knobs vLLM takes as ``--name VALUE`` and as ``--name`` / ``--no-name`` (enforce_eager: only ``--name``)
NUMERIC_KNOBS = ("max_num_seqs", "max_num_batched_tokens", "gpu_memory_utilization", "max_model_len")
BOOL_KNOBS = ("enforce_eager", "enable_chunked_prefill", "enable_prefix_caching")


def config_key(params: Mapping[str, Any]) -> str:
    """A hashable identity of a config, independent of key order."""
    return repr(sorted(params.items()))


#: vLLM's hard limits that the space must never exceed, whatever the user asks for.
MAX_MODEL_LEN_RANGE = (512, 4096)


def build_serving_space(
    *,
    quantization_choices: Sequence[str] = ("fp16",),
    max_model_len_cap: int | None = None,
    max_model_len_floor: int | None = None,
) -> SearchSpace:
    """The seed's 8-knob space.

    ``max_model_len_cap`` comes from the memory model (the KV tokens that fit at the top of the
    ``gpu_memory_utilization`` range, and the model's context length): a larger value can only crash.
    ``max_model_len_floor`` is the workload's longest request (prompt + output): vLLM answers any longer
    request with HTTP 400, so a smaller value can only fail requests.
    """
    mml_low, mml_high = MAX_MODEL_LEN_RANGE
    notes: list[str] = []
    if max_model_len_floor is not None and max_model_len_floor > mml_low:
        if max_model_len_cap is not None and max_model_len_floor > max_model_len_cap:
            raise InputError(
                f"knob 'max_model_len': the workload's longest request needs {max_model_len_floor} tokens but the "
                f"GPU's KV budget holds only {max_model_len_cap}; shorten the workload or use a larger GPU"
            )
        notes.append(f"max_model_len raised to >= {max_model_len_floor}, the workload's longest request")
        mml_low = max_model_len_floor
        mml_high = max(mml_high, mml_low)
    if max_model_len_cap is not None and max_model_len_cap < mml_high:
        if max_model_len_cap < mml_low:
            raise InputError(
                f"knob 'max_model_len': the GPU's KV budget holds only {max_model_len_cap} tokens, "
                f"below the smallest max_model_len {mml_low}; this model does not fit this GPU"
            )
        notes.append(f"max_model_len capped at {max_model_len_cap} by the KV budget")
        mml_high = max_model_len_cap
    return SearchSpace(
        (
            Knob("quantization", "categorical", choices=tuple(quantization_choices),
                 help="weight format; fp16 means the checkpoint dtype (no --quantization flag)"),
            Knob("max_num_seqs", "int", 4, 128, log=True, help="max sequences per scheduler step"),
            Knob("max_num_batched_tokens", "int", 512, 8192, log=True, help="token budget per step"),
            Knob("gpu_memory_utilization", "float", 0.60, 0.95, step=0.01, help="fraction of VRAM vLLM may use"),
            Knob("max_model_len", "int", mml_low, mml_high, log=True, help="max prompt+output length"),
            Knob("enforce_eager", "bool", help="true disables torch.compile and CUDA graphs"),
            Knob("enable_chunked_prefill", "bool", active_if=("enforce_eager", False),
                 help="split long prefills across steps"),
            Knob("enable_prefix_caching", "bool", help="reuse KV blocks of shared prompt prefixes"),
        ),
        tuple(notes),
    )


def parse_range_override(text: str) -> tuple[str, dict[str, Any]]:
    """Parse a CLI override: ``max_num_seqs=8:64`` or ``quantization=fp16,fp8`` or ``enforce_eager=false``."""
    if "=" not in text:
        raise InputError(f"range override {text!r}: expected NAME=LOW:HIGH or NAME=CHOICE[,CHOICE...]")
    name, _, value = text.partition("=")
    name, value = name.strip().replace("-", "_"), value.strip()
    dashed = re.fullmatch(r"(\d+(?:\.\d+)?)\s*-\s*(\d+(?:\.\d+)?)", value)
    if dashed:  # 8-64 would otherwise read as a categorical choice "8-64"
        raise InputError(f"range override {text!r}: write a range as LOW:HIGH ({name}={dashed[1]}:{dashed[2]})")
    if ":" in value:
        lo, _, hi = value.partition(":")
        try:
            return name, {"low": _num(lo), "high": _num(hi)}
        except ValueError:
            raise InputError(f"range override {text!r}: LOW and HIGH must be numbers") from None
    return name, {"choices": [_scalar(v.strip()) for v in value.split(",") if v.strip()]}


def load_space_file(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read a YAML file of knob overrides (``{knob: {low:, high:}|{choices: [...]}}``)."""
    p = Path(path)
    if p.exists() and not p.is_file():  # a folder, or a device such as /dev/zero that would be read forever
        raise InputError(f"space file {str(p)!r} is not a file")
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise InputError(f"space file {str(p)!r} does not exist") from None
    except UnicodeDecodeError:
        raise InputError(f"space file {str(p)!r} is not text (UTF-8)") from None
    except yaml.YAMLError as e:
        raise InputError(f"space file {str(p)!r} is not valid YAML: {yaml_problem(e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"space file {str(p)!r}: top level must be a mapping of knob names")
    if "knobs" in data and isinstance(data["knobs"], dict):
        data = data["knobs"]
    return {str(k): v for k, v in data.items()}


def _num(s: str) -> float:
    f = float(s)
    return int(f) if f.is_integer() and "." not in s else f


def _scalar(s: str) -> Any:
    low = s.lower()
    if low in ("true", "false"):
        return low == "true"
    return s


class ConfigDistance:
    """Euclidean distance with each numeric knob scaled by its search range (log where the space is log;
    recorded values outside the range, like a grid's gmu 0.03, extrapolate), plus 1 per differing flag."""

    def __init__(self) -> None:
        space = build_serving_space()
        self.knobs = [space.knob(name) for name in NUMERIC_KNOBS]

    def __call__(self, a: Config, b: Config) -> float:
        total = sum((k.unit(a[k.name]) - k.unit(b[k.name])) ** 2 for k in self.knobs)
        total += sum(a[k] != b[k] for k in (*BOOL_KNOBS, "quantization"))
        return math.sqrt(total)
