from __future__ import annotations

import json
from pathlib import Path

import pytest

from sloguard_lib.cli import main

BENCH = ["bench", "--backend", "sim", "--model", "qwen2-1.5b", "--gpu", "h100-80gb", "--max-model-len", "2048",
         "--gpu-memory-utilization", "0.5", "--workload",
         "concurrency=16,input_len=512,output_len=128,num_requests=64", "--json"]


def test_bench_prints_metrics_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(BENCH) == 0
    rec = json.loads(capsys.readouterr().out)
    m = rec["metrics"]
    assert rec["status"] == "ok" and rec["config"] == {"max_model_len": 2048, "gpu_memory_utilization": 0.5}
    assert m["requests_ok"] == 64
    assert 2.6 < m["itl_p50_ms"] < 4.4  # real H100: 3.5 ms
    assert m["ttft_p50_ms"] < m["ttft_p99_ms"] * 1.0001
    assert rec["kv_cache_tokens"] > 1_300_000


def test_bench_crash_exits_1_with_vllm_message(capsys: pytest.CaptureFixture[str]) -> None:
    args = [*BENCH]
    args[args.index("0.5")] = "0.03"
    assert main(args) == 1
    rec = json.loads(capsys.readouterr().out)
    assert rec["status"] == "crash" and "No available memory for the cache blocks" in rec["crash_message"]


def test_tune_prints_best_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["tune", "--model", "Qwen/Qwen2-1.5B", "--gpu", "a100-40gb", "--optimizer", "random", "--budget",
                 "4", "--seed", "1", "--out", str(tmp_path), "--quiet", "--workload", "num_requests=64"])
    out = capsys.readouterr().out
    assert code == 0
    assert "study summary" in out and "best config" in out and "crash waste" in out
    assert len(list(tmp_path.glob("*.jsonl"))) == 1


@pytest.mark.parametrize(("extra", "named"), [
    (["--range", "block_size=8:32"], "unknown knob 'block_size'"),
    (["--range", "max_num_seqs=64:8"], "'max_num_seqs': empty range"),
    (["--slo-ttft-p99", "-5"], "ttft_p99_ms=-5"),
    (["--slo-itl-p99", "0.01"], "itl_p99_ms=0.01 is impossible"),
    (["--workload", "concurency=4"], "unknown field 'concurency'"),
    (["--workload", "repeats=0"], "repeats must be 1..1000"),
    (["--model", "no-such-model"], "unknown model 'no-such-model'"),
    (["--budget", "0"], "budget must be 1..100000"),
    (["--load-procs", "0"], "--load-procs must be >= 1"),
])
def test_bad_input_is_named_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str],
                                        named: str) -> None:
    code = main(["tune", "--out", str(tmp_path), "--quiet", "--gpu", "a100-40gb", *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert named in err and err.startswith("error: ")
    assert not list(tmp_path.glob("*.jsonl")), "nothing may be logged for rejected input"


def test_broken_space_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "space.yaml"
    bad.write_text("max_num_seqs: {low: 8\n")
    assert main(["tune", "--space", str(bad), "--out", str(tmp_path), "--quiet"]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    (tmp_path / "ok.yaml").write_text("gpu_memory_utilization: {low: 0.7, high: 0.9}\nmax_num_seqs: {low: 16}\n")
    assert main(["tune", "--space", str(tmp_path / "ok.yaml"), "--out", str(tmp_path), "--budget", "2",
                 "--quiet", "--workload", "num_requests=32"]) == 0
    trials = [json.loads(line) for line in next(tmp_path.glob("*.jsonl")).read_text().splitlines()[1:]]
    assert all(0.7 <= t["params"]["gpu_memory_utilization"] <= 0.9 for t in trials)
    assert all(t["params"]["max_num_seqs"] >= 16 for t in trials)


def test_argparse_errors_also_exit_2() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["tune", "--optimizer", "bayes"])
    assert exc.value.code == 2


@pytest.mark.parametrize("flag", [["--slo-e2e-p99", "900"], ["--slo-tpot-p99", "40"], ["--goodput-def", "vllm"]])
def test_batch_plan_refuses_slo_settings_its_notebooks_would_drop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str],
                                                                    flag: list[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["batch", "plan", "--name", "b", "--backend", "sim", *flag]) == 2
    assert f"{flag[0]} would be ignored" in capsys.readouterr().err
    assert not (tmp_path / "papermill_params").exists()
