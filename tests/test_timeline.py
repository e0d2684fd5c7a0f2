from __future__ import annotations

import json
import math
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sloguard_lib.analysis import steps as step_analysis
from sloguard_lib.engine.sim import SimEngine
from sloguard_lib.hardware import get_gpu, resolve_model
from sloguard_lib.measure import timeline
from sloguard_lib.measure.metrics import LoadResult, RequestResult, summarize
from sloguard_lib.measure.workload import Workload

CHUNKED = {"quantization": "fp16", "max_num_seqs": 55, "max_num_batched_tokens": 677, "gpu_memory_utilization": 0.9,
           "max_model_len": 2048, "enforce_eager": False, "enable_chunked_prefill": True,
           "enable_prefix_caching": False}
WORKLOAD = {"concurrency": 32, "num_requests": 200, "input_len": 512, "output_len": 128, "warmup": 2}


def _req(index: int, start: float, times: list[float]) -> RequestResult:
    return RequestResult(index, ok=True, prompt_tokens=8, output_tokens=len(times), ttft_s=times[0] - start,
                         itl_s=list(np.diff(times)), e2e_s=times[-1] - start, start_s=start)


def test_arrivals_are_cut_into_steps_of_one_token_a_request() -> None:
    # three streams; steps at 10, 13, 13.9, 16, 26 and 29 ms (request 2's prefill ends at 26), read with <= 0.4 ms
    # jitter; request 0's tokens at 13.0 and 13.9 ms are two steps although 0.9 ms apart: one token a request a step
    a = _req(0, 0.0, [0.0100, 0.0130, 0.0139, 0.0160])
    b = _req(1, 0.0, [0.0102, 0.0134, 0.0163])
    c = _req(2, 0.012, [0.0260, 0.0290])
    s = timeline.steps([a, b, c])
    assert s.at_s.tolist() == pytest.approx([0.0100, 0.0130, 0.0139, 0.0160, 0.0260, 0.0290])
    assert s.tokens.tolist() == [2, 2, 1, 2, 1, 1] and s.first.tolist() == [2, 0, 0, 0, 1, 0]
    p = timeline.profile(s)
    assert p["steps"] == 6 and p["prefill_share"] == pytest.approx(1 / 5)
    assert p["prefill_p50_ms"] == pytest.approx(10.0)  # 16 -> 26 ms
    assert p["gaps_in_prefill_steps"] == 0.0  # the step that finished request 2's prefill ended nobody's gap
    empty = timeline.profile(timeline.steps([RequestResult(3, ok=False, prompt_tokens=8)]))  # a failure: no token
    assert empty["steps"] == 0 and math.isnan(empty["decode_p50_ms"])


def _sim_load(config: dict[str, Any] = CHUNKED) -> LoadResult:
    engine = SimEngine(resolve_model("qwen2-1.5b"), get_gpu("h100-80gb"))
    return engine.launch(config, trial_seed=0).run_load(Workload.from_dict(WORKLOAD))


def test_a_saved_timeline_reads_back_to_the_microsecond_and_shows_the_engines_steps(tmp_path: Path) -> None:
    load = _sim_load()
    load.requests.append(RequestResult(999, ok=False, prompt_tokens=512, http_status=400, error="too long"))
    timeline.save(load, tmp_path / "t.npz")
    back = timeline.read(tmp_path / "t.npz")
    assert (tmp_path / "t.npz").stat().st_size < 60_000
    assert [r.index for r in back.requests] == [r.index for r in load.requests]
    assert not back.requests[-1].ok and math.isnan(back.requests[-1].ttft_s)
    for ours, theirs in zip(back.requests[:-1], load.requests[:-1], strict=True):
        assert np.abs(timeline.token_times(ours) - timeline.token_times(theirs)).max() < 2e-6
    m, m_back = summarize(load), summarize(back)
    for k in ("ttft_p50_ms", "itl_p99_ms", "throughput_tok_s"):
        assert m_back[k] == pytest.approx(m[k], rel=1e-4)
    # every step of the simulated engine emits its tokens at one instant: the cut finds each one
    s = timeline.steps(back.requests)
    assert len(s.at_s) == load.engine_stats["steps"] == 1047
    assert s.tokens.sum() == 200 * 128 and s.first.sum() == 200


def test_real_trials_timelines_are_found_in_the_tarball_a_device_call_brings_back(tmp_path: Path) -> None:
    """A study log of a 'real' trial whose timeline is a sim load of its own config: the real and sim columns agree
    exactly, so what is checked is the plumbing (log -> point -> tarball member -> steps)."""
    study = "qwen2-1.5b_h100-80gb_vllm_random_seed1"
    space = {"knobs": [{"name": k, "kind": "categorical", "choices": [v]} for k, v in CHUNKED.items()]}
    header = {"kind": "study", "schema": 1, "study_id": study, "optimizer": "random", "seed": 1, "budget": 1,
              "model": "qwen2-1.5b", "gpu": "h100-80gb", "backend": "vllm", "workload": WORKLOAD, "space": space,
              "slo": {"ttft_p99_ms": 500.0, "itl_p99_ms": 100.0}}
    load = _sim_load()
    trial = {"kind": "trial", "study_id": study, "trial": 0, "seed": 1, "optimizer": "random", "params": CHUNKED,
             "config": CHUNKED, "status": "ok", "metrics": summarize(load),
             "engine_info": {"timelines": ["trial000_port1.load0.npz"]}}
    log = tmp_path / f"{study}.jsonl"
    log.write_text(json.dumps(header) + "\n" + json.dumps(trial) + "\n")
    folder = tmp_path / "server_logs" / study
    folder.mkdir(parents=True)
    timeline.save(load, folder / "trial000_port1.load0.npz")
    with tarfile.open(tmp_path / "server_logs.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "server_logs", arcname="server_logs")
    for source in (tmp_path / "server_logs.tar.gz", tmp_path / "server_logs"):
        (row,) = step_analysis.rows([log], [source])
        assert row["counter_steps"] == row["real_steps"] == row["sim_steps"] == 1047
        for k in (*step_analysis.PROFILE, "itl_p99_ms"):
            assert row[f"real_{k}"] == pytest.approx(row[f"sim_{k}"], rel=1e-3), k
    assert "1047 / 1047 (1047)" in step_analysis.table([row])
