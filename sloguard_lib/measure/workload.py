"""Synthetic serving workloads with exact token counts.

The same :class:`Workload` drives every backend: the simulator consumes the request list directly; the
real load generator sends each request's token ids with ``ignore_eos`` and a fixed ``max_tokens`` so the
engine does exactly the work described here, no matter what the (dummy) weights would have said.

Arrivals are either closed-loop (``concurrency`` requests in flight, a new one sent when one finishes,
like ``vllm bench serve --max-concurrency`` with an infinite rate) or open-loop Poisson at ``rate``
requests/s (optionally still capped by ``concurrency``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import numpy as np

from sloguard_lib.errors import InputError

LenDist = Literal["fixed", "uniform", "lognormal"]
Api = Literal["completions", "chat"]


#: bounds that keep a typo from allocating terabytes (10**12 requests did) or waiting forever
MAX_COUNT = 1_000_000
MAX_TOKENS = 10_000_000

@dataclass(frozen=True)
class Request:
    index: int
    prompt_len: int
    output_len: int
    prefix_len: int  # leading tokens shared by every request (a common system prompt)
    arrival_s: float  # send time for open-loop; 0 for closed-loop (the semaphore decides)

    def prompt_token_ids(self, vocab_size: int, seed: int) -> list[int]:
        """Deterministic prompt ids: the shared prefix is identical across requests, the rest is unique."""
        shared = np.random.default_rng(seed).integers(100, vocab_size - 100, size=self.prefix_len)
        own = np.random.default_rng((seed, self.index)).integers(
            100, vocab_size - 100, size=self.prompt_len - self.prefix_len
        )
        return [int(t) for t in np.concatenate([shared, own])]


@dataclass(frozen=True)
class Workload:
    concurrency: int = 32
    rate: float = math.inf  # requests/s; inf = closed loop
    num_requests: int = 200
    input_len: int = 512
    output_len: int = 128
    len_dist: LenDist = "fixed"
    len_spread: float = 0.0  # relative spread for uniform (+-) / sigma for lognormal
    shared_prefix: float = 0.0  # fraction of input_len that is a prefix common to all requests
    warmup: int = 2  # requests sent and discarded before measuring (real backends)
    seed: int = 0
    api: Api = "completions"  # real backends: /v1/completions, or /v1/chat/completions (prompt as words)
    # loads per trial on the one server, each on its own prompt seed, pooled into one measurement: real vLLM's
    # whole loads shift by ~4 % in speed, which moves a sixth of the requests across an SLO in the middle of
    # the latency distribution; a longer load does not average that out, independent loads do
    repeats: int = 1

    def __post_init__(self) -> None:
        checks = [
            (1 <= self.concurrency <= MAX_COUNT, f"concurrency must be 1..{MAX_COUNT}"),
            (self.rate >= 1e-3, "rate must be >= 0.001 requests/s (use inf for closed loop)"),
            (1 <= self.num_requests <= MAX_COUNT, f"num_requests must be 1..{MAX_COUNT}"),
            (1 <= self.input_len <= MAX_TOKENS, f"input_len must be 1..{MAX_TOKENS}"),
            (1 <= self.output_len <= MAX_TOKENS, f"output_len must be 1..{MAX_TOKENS}"),
            (self.len_dist in ("fixed", "uniform", "lognormal"), "len_dist must be fixed, uniform or lognormal"),
            (0 <= self.len_spread <= 2, "len_spread must be in [0, 2]"),
            (0 <= self.shared_prefix < 1, "shared_prefix must be in [0, 1)"),
            (0 <= self.warmup <= MAX_COUNT, f"warmup must be 0..{MAX_COUNT}"),
            (1 <= self.repeats <= 1000, "repeats must be 1..1000"),
            (self.api in ("completions", "chat"), "api must be completions or chat"),
        ]
        for ok, msg in checks:
            if not ok:
                raise InputError(f"workload: {msg}")

    @property
    def closed_loop(self) -> bool:
        return math.isinf(self.rate)

    def requests(self) -> list[Request]:
        rng = np.random.default_rng((self.seed, 7))
        prefix = int(self.input_len * self.shared_prefix)
        ins = self._lengths(rng, self.input_len, minimum=max(1, prefix + 1))
        outs = self._lengths(rng, self.output_len, minimum=1)
        if self.closed_loop:
            arrivals = np.zeros(self.num_requests)
        else:
            arrivals = np.cumsum(rng.exponential(1.0 / self.rate, size=self.num_requests))
            arrivals -= arrivals[0]
        return [
            Request(i, int(ins[i]), int(outs[i]), prefix, float(arrivals[i])) for i in range(self.num_requests)
        ]

    def _lengths(self, rng: np.random.Generator, mean: int, minimum: int) -> np.ndarray:
        n = self.num_requests
        if self.len_dist == "fixed" or self.len_spread == 0:
            vals = np.full(n, mean, dtype=float)
        elif self.len_dist == "uniform":
            vals = rng.uniform(mean * (1 - self.len_spread), mean * (1 + self.len_spread), size=n)
        else:
            s = self.len_spread
            vals = rng.lognormal(math.log(mean) - s * s / 2, s, size=n)
        out: np.ndarray = np.maximum(np.rint(vals), minimum).astype(int)
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rate"] = None if self.closed_loop else self.rate
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Workload:
        d = dict(d)
        if d.get("rate") is None:
            d["rate"] = math.inf
        return cls(**d)

    def describe(self) -> str:
        mode = f"concurrency={self.concurrency}" if self.closed_loop else f"rate={self.rate}/s"
        loads = f", {self.repeats} loads" if self.repeats > 1 else ""
        return f"{mode}, {self.num_requests} x ({self.input_len} in, {self.output_len} out){loads}"


_FIELDS = {f.name: f for f in fields(Workload)}


def parse_workload(spec: str | None, base: Workload | None = None) -> Workload:
    """Parse ``concurrency=16,input_len=512,output_len=128,num_requests=64`` onto ``base``."""
    values = (base or Workload()).to_dict()
    if values["rate"] is None:
        values["rate"] = math.inf
    for part in (spec or "").split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, raw = part.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise InputError(f"workload: {part!r} is not KEY=VALUE")
        if key not in _FIELDS:
            raise InputError(f"workload: unknown field {key!r}; known: {', '.join(_FIELDS)}")
        raw = raw.strip()
        try:
            if key in ("len_dist", "api"):
                values[key] = raw
            elif key in ("rate", "len_spread", "shared_prefix"):
                values[key] = float(raw)
            else:
                values[key] = int(raw)
        except ValueError:
            raise InputError(f"workload: {key}={raw!r} is not a number") from None
    return Workload(**values)


def workload_from(value: str | Mapping[str, Any] | Workload) -> Workload:
    """A workload from a CLI spec string, a mapping of its fields (notebook and YAML parameters) or itself."""
    if isinstance(value, Workload):
        return value
    if isinstance(value, str):
        return parse_workload(value)
    unknown = set(value) - set(_FIELDS)
    if unknown:
        raise InputError(f"workload: unknown field(s) {sorted(unknown)}; known: {', '.join(_FIELDS)}")
    return Workload.from_dict(Workload().to_dict() | dict(value))
