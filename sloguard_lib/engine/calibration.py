"""Every calibration constant of the simulator, in one place.

Fitted (``scripts/fit_sim.py --method nelder-mead --iters 200``, on the files of ``fidelity.FIT_FILES``) to real
vLLM 0.26.0 on H100 80GBs serving a dummy-weight Qwen2-1.5B: 85 loads of 42 configs
(``sloguard_lib/data/h100/calibration.jsonl``, the fidelity grid, real studies' trials), measured with this
package's load generator. Physical
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
    compute_eff: float = 0.4068  # fraction of dense peak reached by the linear layers
    attn_compute_eff: float = 0.3082  # FlashAttention prefill efficiency
    bw_eff: float = 0.7153  # fraction of HBM peak reached reading weights and KV
    quantized_gemm_eff: float = 0.5  # int4 kernels (awq/gptq) relative to fp16 GEMM efficiency

    # --- per-step host overheads (seconds) ---
    step_overhead_s: float = 0.0004176  # scheduler + launch of one full-CUDA-graph decode step
    per_seq_overhead_s: float = 5.397e-05  # input prep + sampling + output processing per sequence
    piecewise_per_layer_s: float = 0.0001379  # attention runs outside graphs in mixed (prefill) steps
    eager_per_layer_s: float = 0.0006638  # Python + kernel launches per layer without CUDA graphs
    max_capture_size: int = 512  # full decode graphs go up to min(max_num_seqs, this) (sim.largest_capture_size)
    piecewise_decode_per_layer_s: float = 0.0002  # a decode step above every full graph runs piecewise: 6.5-12 ms for
    # 10-27 sequences where full graphs took 2.6 ms (results/h100/cudagraph_sizes/), ~0.2 ms per layer. Mixed
    # (prefill) steps hide the same launches behind their compute: piecewise_per_layer_s above. Measured, not fitted

    # --- API server (frontend) ---
    request_overhead_s: float = 0.01762  # HTTP + input processing + first-chunk streaming of one request
    admit_serial_s: float = 0.001667  # API-server time per new request, one at a time: bursts queue here
    busy_input_s: float = 0.06656  # a request reaching a busy engine core enters its scheduler this much later:
    # the server's TTFT after its queue is ~50 ms under load whatever the step time, ~18 ms for one request alone
    stream_token_s: float = 9.815e-06  # API-server time to stream one token (detokenise, JSON, SSE write): at
    # ~10k+ tok/s the one-process frontend itself saturates, delaying new requests' admission (TTFT)

    # --- noise ---
    step_noise_sigma: float = 0.04  # log-normal sigma of per-step time
    trial_noise_sigma: float = 0.02  # log-normal sigma of one speed factor per load (load-to-load shifts; real
    # vLLM on the H100 shows ~0.044: results/h100/README.md, "Load-to-load goodput noise")
    hiccup_prob: float = 0.02  # host hiccups (GC, scheduling): this fraction of steps takes
    hiccup_s: float = 0.01162  # this much longer -- the heavy tail behind real ITL p99s. Added, not a multiple of the
    # step: real ITL p99 - p50 is 8-15 ms on eager configs (15-20 ms steps) and 5-25 ms with graphs (3-4 ms steps);
    # a 2.7x multiple put eager ITL p99 at 44-52 ms where 8 of 11 real ones were 20-31 ms (results/h100/multiseed/)

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
