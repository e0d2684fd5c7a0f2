"""The embedded default backend: a discrete-event model of a vLLM V1 server on a given GPU.

It is a simulation of the mechanisms, not a formula for the result:

* **Start-up** follows vLLM's order (validate args -> load weights -> profile activations -> compile and
  capture CUDA graphs -> size the KV cache) and fails where vLLM fails, with vLLM's message text and the
  GPU time a real failed start costs.
* **Memory**: KV bytes = gpu_memory_utilization x VRAM - weights - activation peak(max_num_batched_tokens,
  max_num_seqs) - CUDA-graph pools, split into paged blocks of 16 tokens.
* **Scheduler** (V1): every step has a token budget ``max_num_batched_tokens`` and at most
  ``max_num_seqs`` running sequences. Running sequences are served first (decodes, then continuing
  prefill chunks); waiting ones are admitted FCFS while budget, sequence slots and KV blocks last. With
  chunked prefill a prompt is split across steps; without it a prompt must fit one step whole. When a
  running sequence needs a block and none is free, the newest running sequence is preempted and later
  recomputed. Prefix caching keeps the full blocks of the shared prompt prefix resident (evictable when
  idle) so later requests skip that part of the prefill.
* **Step time** is a roofline: max(FLOPs / (peak x efficiency), bytes read / (HBM x efficiency)) over
  weights, KV reads and attention, plus a host overhead that full CUDA graphs keep small, piecewise
  graphs (mixed prefill steps, and decode batches above the largest full graph, which vLLM captures only up to
  ``max_num_seqs``) raise per layer, and ``enforce_eager`` raises per layer for every step;
  seeded log-normal noise per step and per trial.
* **Client/API server**: a fixed per-request overhead (HTTP, input processing, stream set-up) and
  closed-loop or Poisson arrivals; requests longer than ``max_model_len`` get vLLM's HTTP 400.

Constants are in :mod:`.calibration`; physical GPU numbers in :mod:`sloguard_lib.hardware`.
"""

from __future__ import annotations

import contextlib
import heapq
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sloguard_lib.engine.base import EngineCrash, ServerInfo
from sloguard_lib.engine.calibration import DEFAULT, SimCalibration
from sloguard_lib.hardware import GIB, GpuProfile, ModelShape, latency_floor_ms
from sloguard_lib.measure.metrics import LoadResult, RequestResult, truncate
from sloguard_lib.measure.workload import Request, Workload
from sloguard_lib.study.space import Config

SIM_VERSION = "sim-vllm-0.26.0"
MAX_LOAD_S = 1800.0  # simulated wall-clock cap on one load run; unfinished requests time out
DOCS_MEMORY = "https://docs.vllm.ai/en/latest/configuration/conserving_memory/"


def vllm_defaults(gpu: GpuProfile, model: ModelShape) -> Config:
    """What ``vllm serve`` uses for knobs the user did not pass (OpenAI API server, V1 engine)."""
    return {
        "quantization": "fp16",
        "max_num_seqs": 1024 if gpu.large_defaults else 256,
        "max_num_batched_tokens": 8192 if gpu.large_defaults else 2048,
        "gpu_memory_utilization": 0.9,
        "max_model_len": model.max_position_embeddings,
        "enforce_eager": False,
        "enable_chunked_prefill": True,
        "enable_prefix_caching": True,
    }


#: vLLM's ``Fp8Config.get_min_capability()``: 75 (Turing) since FP8 Marlin serves GPUs without fp8 tensor cores
#: weight-only (it logs "Your GPU does not have native support for FP8 computation ... Weight-only FP8
#: compression will be used leveraging the Marlin kernel"); ``vllm/config/vllm.py`` raises the message below
#: for anything older (read in the sources of vLLM 0.32, the CPU build the tests use, and 0.30; not re-read in
#: 0.26.0's)
FP8_MIN_CAPABILITY = 75


@dataclass(frozen=True)
class MemoryPlan:
    """vLLM's start-up memory accounting for one config (bytes)."""

    budget: float
    weights: float
    activation: float
    cuda_graphs: float
    kv: float
    num_blocks: int

    @property
    def kv_tokens(self) -> int:
        return self.num_blocks * DEFAULT.block_size


class SimEngine:
    """Simulated vLLM on ``gpu`` serving ``model``; deterministic given the trial seed."""

    name = "sim"

    def __init__(self, model: ModelShape, gpu: GpuProfile, *, cal: SimCalibration = DEFAULT,
                 reserved_gib: float = 0.0) -> None:
        self.model, self.gpu, self.cal = model, gpu, cal
        self.reserved_gib = reserved_gib  # memory held by other processes on the GPU
        self._compiled: set[tuple[int, int]] = set()  # torch.compile cache entries, by the knobs in its key

    def close(self) -> None:
        """Nothing outlives a simulated trial."""

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "engine_version": SIM_VERSION, "gpu": self.gpu.name, "model": self.model.name}

    def full_config(self, config: Config) -> Config:
        return vllm_defaults(self.gpu, self.model) | dict(config)

    # ------------------------------------------------------------------ memory model
    def memory_plan(self, config: Config) -> MemoryPlan:
        c, m, cal = self.full_config(config), self.model, self.cal
        weights = m.weight_bytes(c["quantization"]) + cal.weight_overhead_gib * GIB
        act = (c["max_num_batched_tokens"] * (2 * m.intermediate_size + 4 * m.hidden_size) * m.dtype_bytes
               * cal.act_token_factor + c["max_num_seqs"] * m.vocab_size * 4 * cal.logits_factor)
        graphs = 0.0 if c["enforce_eager"] else cal.cuda_graph_gib_per_layer * m.num_layers * GIB
        budget = c["gpu_memory_utilization"] * self.gpu.vram_gib * GIB
        kv = budget - weights - act - graphs - cal.nontorch_gib * GIB
        blocks = max(0, int(kv // (cal.block_size * m.kv_bytes_per_token())))
        return MemoryPlan(budget, weights, act, graphs, kv, blocks)

    def latency_floor_ms(self, workload: Workload) -> tuple[float, float]:
        return latency_floor_ms(self.model, self.gpu, workload.input_len)

    def restore(self, trials: Sequence[Mapping[str, Any]]) -> None:
        """Start every logged config again: start-ups are deterministic and cheap here, and the compile cache
        then holds what it held when the logged run got there (issue #24 F7: without it, resumed ``tba`` runs
        paid cold compiles twice and their ``gpu_seconds`` drifted)."""
        for rec in trials:
            with contextlib.suppress(EngineCrash):
                self.launch(rec["config"], trial_seed=0)

    # ------------------------------------------------------------------ start-up
    def launch(self, config: Config, *, trial_seed: int, label: str = "") -> SimServer:
        c, m, cal, gpu = self.full_config(config), self.model, self.cal, self.gpu
        mnbt, mml, mns = c["max_num_batched_tokens"], c["max_model_len"], c["max_num_seqs"]
        t = cal.boot_s
        if mml > m.max_position_embeddings:
            raise EngineCrash(
                "invalid_config",
                f"pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig\n"
                f"  Value error, User-specified max_model_len ({mml}) is greater than the derived max_model_len "
                f"(max_position_embeddings={m.max_position_embeddings} or model_max_length=None in model's "
                f"config.json).",
                elapsed_s=cal.validation_fail_s)
        if not c["enable_chunked_prefill"] and mnbt < mml:
            raise EngineCrash(
                "invalid_config",
                f"pydantic_core._pydantic_core.ValidationError: 1 validation error for SchedulerConfig\n"
                f"  Value error, max_num_batched_tokens ({mnbt}) is smaller than max_model_len ({mml}). This "
                f"effectively limits the maximum sequence length to max_num_batched_tokens and makes vLLM reject "
                f"longer sequences. Please increase max_num_batched_tokens or decrease max_model_len.",
                elapsed_s=cal.validation_fail_s)
        if mnbt < mns:
            raise EngineCrash(
                "invalid_config",
                f"pydantic_core._pydantic_core.ValidationError: 1 validation error for SchedulerConfig\n"
                f"  Value error, max_num_batched_tokens ({mnbt}) must be greater than or equal to "
                f"max_num_seqs ({mns}).",
                elapsed_s=cal.validation_fail_s)
        if c["quantization"] == "fp8" and gpu.capability < FP8_MIN_CAPABILITY:
            raise EngineCrash(
                "invalid_config",
                "ValueError: The quantization method fp8 is not supported for the current GPU. Minimum "
                f"capability: {FP8_MIN_CAPABILITY}. Current capability: {gpu.capability}.",
                elapsed_s=cal.validation_fail_s)
        free = (gpu.vram_gib - self.reserved_gib) * GIB
        plan = self.memory_plan(c)
        if plan.budget > free:
            raise EngineCrash(
                "oom",
                f"ValueError: Free memory on device ({free / GIB:.2f}/{gpu.vram_gib:.2f} GiB) on startup is less "
                f"than desired GPU memory utilization ({c['gpu_memory_utilization']}, {plan.budget / GIB:.2f} GiB). "
                "Decrease GPU memory utilization or reduce GPU memory used by other processes.",
                elapsed_s=cal.boot_s)
        t += cal.load_s_per_gib * plan.weights / GIB
        if plan.weights > free:
            raise EngineCrash(
                "oom",
                f"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate {plan.weights / GIB:.2f} GiB. GPU 0 "
                f"has a total capacity of {gpu.vram_gib:.2f} GiB of which {free / GIB:.2f} GiB is free.",
                elapsed_s=t)
        if not c["enforce_eager"]:
            key = (mnbt, mns)  # vLLM's cache hash covers the compile range and the graph capture sizes
            t += cal.compile_warm_s if key in self._compiled else cal.compile_cold_s
            self._compiled.add(key)
        t += cal.profile_s
        if plan.weights + plan.activation > free:
            raise EngineCrash(
                "oom",
                f"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate {plan.activation / GIB:.2f} GiB "
                f"during the profile run with max_num_batched_tokens={mnbt}. GPU 0 has a total capacity of "
                f"{gpu.vram_gib:.2f} GiB of which {(free - plan.weights) / GIB:.2f} GiB is free.",
                elapsed_s=t)
        if plan.kv <= 0:
            raise EngineCrash(
                "kv_insufficient",
                "ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization` "
                "when initializing the engine (this flag also controls CPU memory reservation on the CPU backend, "
                f"despite its name). See {DOCS_MEMORY} for more details.\n"
                "RuntimeError: Engine core initialization failed. See root cause above.",
                elapsed_s=t)
        need_gib = math.ceil(mml / cal.block_size) * cal.block_size * m.kv_bytes_per_token() / GIB
        if plan.kv_tokens < mml:
            raise EngineCrash(
                "kv_insufficient",
                f"ValueError: To serve at least one request with the model's max seq len ({mml}), "
                f"({need_gib:.2f} GiB KV cache is needed, which is larger than the available KV cache memory "
                f"({plan.kv / GIB:.2f} GiB). Based on the available memory, the estimated maximum model length is "
                f"{plan.kv_tokens}. Try increasing `gpu_memory_utilization` (which also controls CPU memory on the "
                f"CPU backend) or decreasing `max_model_len` when initializing the engine. See {DOCS_MEMORY} for "
                "more details.\nRuntimeError: Engine core initialization failed. See root cause above.",
                elapsed_s=t)
        if not c["enforce_eager"]:
            t += cal.graph_capture_s
        t += cal.kv_alloc_s
        info = ServerInfo(
            backend=self.name, engine_version=SIM_VERSION, gpu=gpu.name, model=m.name, start_s=t,
            kv_cache_tokens=plan.kv_tokens,
            extra={"kv_cache_gib": plan.kv / GIB, "weights_gib": plan.weights / GIB,
                   "activation_gib": plan.activation / GIB, "cuda_graph_gib": plan.cuda_graphs / GIB},
        )
        return SimServer(self, c, plan, info, trial_seed)


def largest_capture_size(limit: int) -> int:
    """The largest CUDA-graph batch size vLLM captures at most ``limit``: sizes 1, 2, 4, then multiples of 8 up to
    256, then of 16. vLLM 0.26.0 captures full graphs (whole decode steps) up to ``max_num_seqs`` and piecewise
    ones (attention outside) up to twice it: its logs on the H100 show 4 full and 5 piecewise graphs at
    ``max_num_seqs`` 8, 7 and 11 at 32. So a full batch of 10 or 12 sequences (largest full graph 8) or 27 (24)
    decodes piecewise, 6.5-12 ms a step, where 8 and 16 decode in 2.6 ms (results/h100/cudagraph_sizes/)."""
    if limit >= 256:
        return 256 + (limit - 256) // 16 * 16
    if limit < 8:
        return max(n for n in (0, 1, 2, 4) if n <= limit)
    return limit // 8 * 8


class _Seq:
    """A request inside the engine."""

    __slots__ = ("blocks", "computed", "done_at", "first_at", "generated", "hit", "queued", "req", "scheduled", "send",
                 "shared", "times")

    def __init__(self, req: Request, send: float) -> None:
        self.req = req
        self.send = send
        self.computed = 0  # tokens whose KV is in the cache
        self.generated = 0
        self.blocks = 0  # blocks owned by this sequence (shared prefix blocks excluded)
        self.shared = 0  # prefix blocks borrowed from the prefix cache
        self.hit = False
        self.times: list[float] = []
        self.done_at = math.nan
        self.queued = math.nan  # when the engine core got it, and first scheduled it: vLLM's queue time
        self.scheduled = math.nan
        self.first_at = math.nan  # the end of the step that made its first token (vLLM's prefill time ends there)

    @property
    def num_tokens(self) -> int:
        return self.req.prompt_len + self.generated


class SimServer:
    """One simulated server process; ``run_load`` is the discrete-event loop."""

    def __init__(self, engine: SimEngine, config: Config, plan: MemoryPlan, info: ServerInfo, seed: int) -> None:
        self.engine, self.c, self.plan, self.info = engine, config, plan, info
        self.rng = np.random.default_rng(seed)

    def close(self) -> None:
        pass

    def run_load(self, workload: Workload, until: Callable[[RequestResult], bool] | None = None) -> LoadResult:
        """The whole load is simulated, then cut where ``until`` would have ended it live: the same requests and
        the same instant a real client's stop gives."""
        load = _Simulation(self, workload).run()
        return truncate(load, until) if until else load


class _Simulation:
    def __init__(self, server: SimServer, workload: Workload) -> None:
        e, c = server.engine, server.c
        self.m, self.cal, self.gpu, self.c, self.wl = e.model, e.cal, e.gpu, c, workload
        self.rng = server.rng
        self.trial_factor = float(self.rng.lognormal(0.0, self.cal.trial_noise_sigma))
        self.noise = self._noise_block()
        self.noise_i = 0
        self.free_blocks = server.plan.num_blocks
        self.total_blocks = server.plan.num_blocks
        self.chunked: bool = c["enable_chunked_prefill"]
        self.prefix_blocks = 0  # full blocks of the shared prefix that are resident in the prefix cache
        self.prefix_refs = 0
        self.preemptions = 0
        self.steps = 0
        self.step_tokens = 0
        self.peak_used = 0
        self._cost_constants()

    def _cost_constants(self) -> None:
        m, cal, gpu, c = self.m, self.cal, self.gpu, self.c
        quant = c["quantization"]
        # fp8 without fp8 tensor cores (A100, T4) runs weight-only through Marlin: 1-byte weights, fp16 math
        peak = (gpu.fp8_tflops if quant == "fp8" and gpu.fp8_tflops else gpu.fp16_tflops) * 1e12
        eff = cal.compute_eff * (cal.quantized_gemm_eff if quant in ("awq", "gptq") else 1.0)
        self.s_per_linear_flop = 1.0 / (peak * eff)
        self.s_per_attn_flop = 1.0 / (gpu.fp16_tflops * 1e12 * cal.attn_compute_eff)
        self.s_per_byte = 1.0 / (gpu.hbm_tbps * 1e12 * cal.bw_eff)
        self.linear_flops_per_token = 2.0 * m.linear_params
        self.lm_head_flops = 2.0 * m.hidden_size * m.vocab_size
        self.attn_flops_per_pair = 4.0 * m.num_layers * m.num_heads * m.head_dim
        self.weight_bytes = m.weight_bytes(quant)
        self.kv_bytes = m.kv_bytes_per_token()
        eager = c["enforce_eager"]
        self.capture_max = 0 if eager else largest_capture_size(min(c["max_num_seqs"], cal.max_capture_size))
        self.overhead_graph = cal.step_overhead_s
        self.overhead_mixed = cal.step_overhead_s + m.num_layers * (
            cal.eager_per_layer_s if eager else cal.piecewise_per_layer_s)
        # a decode batch above every full graph runs the piecewise ones (captured up to twice max_num_seqs)
        self.overhead_eager = cal.step_overhead_s + m.num_layers * (
            cal.eager_per_layer_s if eager else cal.piecewise_decode_per_layer_s)

    def _noise_block(self, n: int = 4096) -> tuple[list[float], list[float]]:
        """Per-step time multipliers (log-normal jitter) and added seconds (rare host hiccups: the real ITL tail), as
        Python floats: numpy scalars in the step loop's arithmetic made a default trial ~1.5x slower."""
        cal = self.cal
        jitter = self.rng.lognormal(0.0, cal.step_noise_sigma, size=n)
        return jitter.tolist(), np.where(self.rng.random(n) < cal.hiccup_prob, cal.hiccup_s, 0.0).tolist()

    # ------------------------------------------------------------------ KV blocks
    def _blocks_for(self, seq: _Seq, tokens: int) -> int:
        return -(-tokens // self.cal.block_size) - seq.shared - seq.blocks

    def _take(self, n: int) -> bool:
        if n <= self.free_blocks:
            self.free_blocks -= n
            return True
        if self.prefix_blocks and self.prefix_refs == 0 and n <= self.free_blocks + self.prefix_blocks:
            self.free_blocks += self.prefix_blocks  # evict the idle cached prefix
            self.prefix_blocks = 0
            self.free_blocks -= n
            return True
        return False

    def _release(self, seq: _Seq) -> None:
        self.free_blocks += seq.blocks
        seq.blocks = 0
        if seq.shared:
            self.prefix_refs -= 1
            seq.shared = 0

    # ------------------------------------------------------------------ main loop
    def run(self) -> LoadResult:
        wl, c, cal = self.wl, self.c, self.cal
        reqs = wl.requests()
        mml = c["max_model_len"]
        max_seqs = c["max_num_seqs"]
        budget_max = c["max_num_batched_tokens"]
        prefix_caching = c["enable_prefix_caching"]
        prefix_full_blocks = (reqs[0].prefix_len // cal.block_size) if reqs else 0

        results: dict[int, RequestResult] = {}
        pending: list[tuple[float, int]] = []  # (time the engine sees it, request index) min-heap
        seqs: dict[int, _Seq] = {}
        next_req = 0
        in_flight = 0

        slot_free_at = 0.0  # when a blocked client last got a concurrency slot back
        frontend_free_at = 0.0  # the API server admits new requests one at a time
        arrivals: list[tuple[float, int]] = []  # (time it reaches the API server, request index) min-heap

        def next_send_time() -> float:
            return max(slot_free_at, 0.0 if wl.closed_loop else reqs[next_req].arrival_s)

        def top_up(t: float) -> None:
            """Send every request the client would have sent by time ``t``."""
            nonlocal next_req, in_flight
            while next_req < len(reqs) and in_flight < wl.concurrency and next_send_time() <= t:
                r, send_t = reqs[next_req], next_send_time()
                next_req += 1
                if r.prompt_len + r.output_len > mml:  # vLLM answers 400 at once; no slot is held
                    results[r.index] = RequestResult(
                        r.index, ok=False, prompt_tokens=r.prompt_len, http_status=400, e2e_s=cal.request_overhead_s,
                        start_s=send_t,
                        error=f"This model's maximum context length is {mml} tokens. However, you requested "
                              f"{r.prompt_len + r.output_len} tokens ({r.prompt_len} in the messages, "
                              f"{r.output_len} in the completion). Please reduce the length of the messages or "
                              "completion.")
                    continue
                in_flight += 1
                seqs[r.index] = _Seq(r, send_t)
                heapq.heappush(arrivals, (send_t + cal.request_overhead_s / 2, r.index))

        def admit(t: float) -> None:
            """The API server's work in the order it arrives: admit every request that reached it by ``t``, before
            the tokens of a step that ended at ``t``. (Booked at send time instead, an admission 7 ms ahead blocked
            the streams of steps ending before it: at 64 concurrent the frontend ran up to 1.6 s behind.)"""
            nonlocal frontend_free_at
            while arrivals and arrivals[0][0] <= t:
                ready, idx = heapq.heappop(arrivals)
                frontend_free_at = max(frontend_free_at, ready) + cal.admit_serial_s
                # vLLM's engine core reads requests in an IO thread that needs the GIL its stepping loop holds
                busy = bool(running or waiting)
                heapq.heappush(pending, (frontend_free_at + (cal.busy_input_s if busy else 0.0), idx))

        def next_queued() -> float | None:
            """When the next admitted request enters the engine's queue (None: no request is on its way). With none
            admitted yet, the API server admits the next arrival first: an idle wait's next event."""
            if not pending and arrivals:
                admit(arrivals[0][0])
            return pending[0][0] if pending else None

        def finish_client(t: float) -> None:
            nonlocal in_flight, slot_free_at
            if in_flight == wl.concurrency:
                slot_free_at = t
            in_flight -= 1
            top_up(t)

        now = 0.0
        waiting: list[_Seq] = []
        running: list[_Seq] = []
        while True:
            top_up(now)
            admit(now)
            while pending and pending[0][0] <= now:
                queued, idx = heapq.heappop(pending)
                seqs[idx].queued = queued
                waiting.append(seqs[idx])
            if not waiting and not running:
                if (t := next_queued()) is not None:
                    now = t
                    continue
                if next_req < len(reqs) and in_flight < wl.concurrency:
                    now = max(now, next_send_time())
                    continue
                break
            if now > MAX_LOAD_S:
                break

            # ---------------- schedule one step
            budget = budget_max
            sched: list[tuple[_Seq, int]] = []
            preempted = False
            i = 0
            while i < len(running) and budget > 0:
                seq = running[i]
                n = min(seq.num_tokens - seq.computed, budget)
                need = self._blocks_for(seq, seq.computed + n)
                while need > 0 and not self._take(need):
                    victim = running.pop()  # preempt the newest; recompute later
                    self._release(victim)
                    victim.computed = 0
                    victim.hit = False
                    waiting.insert(0, victim)
                    self.preemptions += 1
                    preempted = True
                    if victim is seq:
                        break
                else:
                    seq.blocks += max(0, need)
                    sched.append((seq, n))
                    budget -= n
                    i += 1
                    continue
                break
            while waiting and not preempted and len(running) < max_seqs and budget > 0:
                seq = waiting[0]
                if prefix_caching and self.prefix_blocks and not seq.hit and seq.computed == 0:
                    cached = min(self.prefix_blocks * cal.block_size, seq.num_tokens - 1)
                    seq.shared, seq.computed, seq.hit = self.prefix_blocks, cached, True
                    self.prefix_refs += 1
                remaining = seq.num_tokens - seq.computed
                if not self.chunked and remaining > budget:
                    break
                n = min(remaining, budget)
                need = self._blocks_for(seq, seq.computed + n)
                if need > 0 and not self._take(need):
                    break
                seq.blocks += max(0, need)
                waiting.pop(0)
                if math.isnan(seq.scheduled):
                    seq.scheduled = now
                running.append(seq)
                sched.append((seq, n))
                budget -= n
            if not sched:
                # nothing fits (all blocks held by waiting-for-nothing): advance to the next arrival
                if (t := next_queued()) is not None:
                    now = max(now, t)
                    continue
                break

            # ---------------- cost of the step
            tokens = 0
            attn_pairs = 0.0
            kv_read = 0
            sampled = 0
            prefill = False
            for seq, n in sched:
                tokens += n
                kv_read += seq.computed + n
                attn_pairs += n * (seq.computed + (n + 1) / 2)
                if n > 1:
                    prefill = True
                if seq.computed + n == seq.num_tokens:
                    sampled += 1
            compute = (tokens * self.linear_flops_per_token + sampled * self.lm_head_flops) * self.s_per_linear_flop
            compute += attn_pairs * self.attn_flops_per_pair * self.s_per_attn_flop
            memory = (self.weight_bytes + kv_read * self.kv_bytes) * self.s_per_byte
            if prefill:
                overhead = self.overhead_mixed
            elif len(sched) <= self.capture_max:
                overhead = self.overhead_graph
            else:
                overhead = self.overhead_eager
            overhead += cal.per_seq_overhead_s * len(sched)
            if self.noise_i == len(self.noise[0]):
                self.noise = self._noise_block()
                self.noise_i = 0
            jitter, hiccup = self.noise
            dt = (max(compute, memory) + overhead) * self.trial_factor * jitter[self.noise_i] + hiccup[self.noise_i]
            self.noise_i += 1
            now += dt
            self.steps += 1
            self.step_tokens += tokens
            used = self.total_blocks - self.free_blocks
            self.peak_used = max(self.peak_used, used)

            # ---------------- apply the step; the API server streams its tokens one by one, after
            # whatever it still had queued (the engine core, another process, does not wait for it)
            emitted = sum(1 for seq, n in sched if seq.computed + n == seq.num_tokens)
            admit(now)
            frontend_free_at = max(frontend_free_at, now) + emitted * cal.stream_token_s
            delivered = frontend_free_at
            finished: list[_Seq] = []
            for seq, n in sched:
                seq.computed += n
                if prefix_caching and not seq.hit and prefix_full_blocks and not self.prefix_blocks and \
                        seq.computed >= prefix_full_blocks * cal.block_size:
                    # the prefix's blocks become the shared cache entry this sequence now borrows
                    moved = min(prefix_full_blocks, seq.blocks)
                    seq.blocks -= moved
                    seq.shared, seq.hit = moved, True
                    self.prefix_blocks = moved
                    self.prefix_refs += 1
                if seq.computed == seq.num_tokens:
                    seq.generated += 1
                    if seq.generated == 1:
                        seq.first_at = now
                    seq.times.append(delivered)
                    if seq.generated >= seq.req.output_len:
                        finished.append(seq)
            for seq in finished:
                running.remove(seq)
                self._release(seq)
                seq.done_at = now
                results[seq.req.index] = self._result(seq)
                finish_client(delivered + cal.request_overhead_s / 2)

        for idx, seq in seqs.items():
            if idx not in results:
                results[idx] = RequestResult(idx, ok=False, prompt_tokens=seq.req.prompt_len,
                                             output_tokens=seq.generated, http_status=None,
                                             error=f"timeout: no completion within {MAX_LOAD_S:.0f} s")
        ordered = [results[r.index] for r in reqs if r.index in results]
        used_frac = self.peak_used / self.total_blocks if self.total_blocks else 0.0
        served = [seq for idx, seq in seqs.items() if results[idx].ok]
        # the server's own clock, as vLLM's /metrics keep it: time in the engine's waiting queue, from its first
        # scheduling to its first token (prefill), and first token from the API server's receipt (TTFT without the
        # client's and HTTP's share)
        return LoadResult(ordered, duration_s=max(now, frontend_free_at), engine_stats={
            "num_preemptions": float(self.preemptions), "kv_cache_usage_peak": used_frac, "steps": float(self.steps),
            "step_tokens": float(self.step_tokens), "requests": float(len(served)),
            "queue_s": sum(seq.scheduled - seq.queued for seq in served),
            "prefill_s": sum(seq.first_at - seq.scheduled for seq in served),
            "server_ttft_s": sum(seq.times[0] - seq.send - cal.request_overhead_s / 2 for seq in served)})

    def _result(self, seq: _Seq) -> RequestResult:
        times = np.asarray(seq.times)
        # the client sees tokens one frontend hop later; a preempted request's times stay monotone
        ttft = float(times[0]) - seq.send + self.cal.request_overhead_s / 2
        gaps = np.diff(times).tolist() if len(times) > 1 else []
        return RequestResult(
            seq.req.index, ok=True, prompt_tokens=seq.req.prompt_len, output_tokens=seq.generated,
            ttft_s=ttft, itl_s=gaps, e2e_s=ttft + float(times[-1] - times[0]), start_s=seq.send,
        )
