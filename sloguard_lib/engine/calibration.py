"""Every calibration constant of the simulator, in one place.

Fitted (``scripts/fit_sim.py``) to real vLLM 0.26.0 on one H100 80GB serving a dummy-weight Qwen2-1.5B: the
25 load points of ``sloguard_lib/data/h100/calibration.jsonl``, measured with this package's load generator. Physical
constants (bandwidth, FLOP/s) live in :mod:`sloguard_lib.hardware`; these are the *efficiencies and
overheads* that turn the roofline into the times vLLM actually shows. ``benchmarks/sim_fidelity.py`` prints
sim vs real for every point.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SimCalibration:
    # --- memory model (GiB unless noted) ---
    weight_overhead_gib: float = 0.145  # rotary caches, sampler buffers: vLLM logs 3.02 GiB vs 2.875 computed
    act_token_factor: float = 0.415  # profile peak: mnbt x (2*intermediate + 4*hidden) x dtype bytes x this
    logits_factor: float = 0.0  # + max_num_seqs x vocab x 4 B x this (measured: max_num_seqs barely matters)
    cuda_graph_gib_per_layer: float = 0.0  # 0.26 captures graphs after sizing the KV cache: no KV cost
    nontorch_gib: float = 0.633  # CUDA context, cuBLAS workspaces: non-KV memory not explained above
    block_size: int = 16

    # --- roofline efficiencies ---
    compute_eff: float = 0.4387  # fraction of dense peak reached by the linear layers
    attn_compute_eff: float = 0.309  # FlashAttention prefill efficiency
    bw_eff: float = 0.7351  # fraction of HBM peak reached reading weights and KV
    quantized_gemm_eff: float = 0.5  # int4 kernels (awq/gptq) relative to fp16 GEMM efficiency

    # --- per-step host overheads (seconds) ---
    step_overhead_s: float = 0.001339  # scheduler + launch of one full-CUDA-graph decode step
    per_seq_overhead_s: float = 5.601e-05  # input prep + sampling + output processing per sequence
    piecewise_per_layer_s: float = 5.187e-06  # attention runs outside graphs in mixed (prefill) steps
    eager_per_layer_s: float = 0.0004974  # Python + kernel launches per layer without CUDA graphs
    max_capture_size: int = 512  # full decode graphs go up to min(max_num_seqs, this) (sim.largest_capture_size)
    piecewise_decode_per_layer_s: float = 0.0002  # a decode step above every full graph runs piecewise: 6.5-12 ms for
    # 10-27 sequences where full graphs took 2.6 ms (results/h100/cudagraph_sizes/), ~0.2 ms per layer. Mixed
    # (prefill) steps hide the same launches behind their compute: piecewise_per_layer_s above. Measured, not fitted

    # --- API server (frontend) ---
    request_overhead_s: float = 0.0131  # HTTP + input processing + first-chunk streaming of one request
    admit_serial_s: float = 0.003361  # API-server time per new request, one at a time: bursts queue here
    stream_token_s: float = 1.728e-05  # API-server time to stream one token (detokenise, JSON, SSE write): at
    # ~10k+ tok/s the one-process frontend itself saturates, delaying new requests' admission (TTFT)

    # --- noise ---
    step_noise_sigma: float = 0.04  # log-normal sigma of per-step time
    trial_noise_sigma: float = 0.02  # log-normal sigma of one speed factor per load (load-to-load shifts; real
    # vLLM on the H100 shows ~0.044: results/h100/README.md, "Load-to-load goodput noise")
    hiccup_prob: float = 0.02  # host hiccups (GC, scheduling): this fraction of steps takes
    hiccup_factor: float = 2.7  # this many times longer -- the heavy tail behind real ITL p99s

    # --- start-up timeline (seconds) ---
    boot_s: float = 47.0  # imports, API server, engine-core process, config validation
    validation_fail_s: float = 30.0  # argument/config validation errors surface here (23-60 s measured)
    load_s_per_gib: float = 0.7  # dummy weight init (2 s for 3 GiB)
    profile_s: float = 3.0
    compile_cold_s: float = 25.0  # torch.compile; measured 21.5-24.8 s per start
    compile_warm_s: float = 6.2  # same compile key again: graphs load from ~/.cache/vllm (measured 6.17 s)
    graph_capture_s: float = 5.0
    kv_alloc_s: float = 20.0  # KV allocation + warm-up ("init engine" minus compile)


DEFAULT = SimCalibration()

#: Real H100 figures (vLLM 0.26.0, dummy Qwen2-1.5B, gmu 0.5, max_model_len 2048, 512 in / 128 out,
#: streaming, other knobs at vLLM defaults). ``None`` where the source gives no figure.
H100_REFERENCE: tuple[dict[str, float | int | None], ...] = (
    {"concurrency": 1, "ttft_p50_ms": 64.0, "itl_p50_ms": 2.55},
    {"concurrency": 16, "ttft_p50_ms": 190.0, "itl_p50_ms": 3.5, "throughput_tok_s": 6100.0},
    {"concurrency": 64, "ttft_p50_ms": 428.0, "ttft_p99_ms": 1386.0, "itl_p99_ms": 53.0,
     "throughput_tok_s": 7300.0},
)
