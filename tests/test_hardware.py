from __future__ import annotations

import pytest

from sloguard_lib.errors import InputError
from sloguard_lib.hardware import GIB, detect_vram_gib, get_gpu, kv_budget_tokens, resolve_model


def test_kv_bytes_and_weights_from_config() -> None:
    qwen = resolve_model("Qwen/Qwen2-1.5B")
    assert qwen.kv_bytes_per_token() == 2 * 28 * 2 * 128 * 2 == 28672
    assert qwen.total_params == pytest.approx(1.544e9, rel=0.01)
    assert qwen.weight_bytes() / GIB == pytest.approx(2.88, abs=0.02)
    llama = resolve_model("meta-llama/Llama-3.1-8B-Instruct")
    assert llama.kv_bytes_per_token() / 1e9 == pytest.approx(0.000131, rel=0.01)
    assert llama.total_params == pytest.approx(8.03e9, rel=0.01)
    assert llama.weight_bytes("fp8") < 0.6 * llama.weight_bytes("fp16")


def test_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    qwen = resolve_model("qwen2-1.5b")
    monkeypatch.setenv("SLOGUARD_KV_BYTES_PER_TOKEN", "0.000524")
    monkeypatch.setenv("SLOGUARD_MODEL_FOOTPRINT_GB", "18")
    assert qwen.kv_bytes_per_token() == pytest.approx(524_000)
    assert qwen.weight_bytes() == pytest.approx(18e9)
    monkeypatch.setenv("SLOGUARD_GPU_VRAM_GB", "24.0")
    assert detect_vram_gib() == (24.0, "SLOGUARD_GPU_VRAM_GB")
    monkeypatch.setenv("SLOGUARD_GPU_VRAM_GB", "lots")
    with pytest.raises(InputError, match="SLOGUARD_GPU_VRAM_GB"):
        detect_vram_gib()


def test_vram_fallback_without_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda _: None)
    assert detect_vram_gib() == (40.0, "fallback")


def test_model_folder_and_errors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "config.json").write_text('{"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,'
                                          '"num_attention_heads": 4, "vocab_size": 1000}')
    tiny = resolve_model(str(tmp_path))
    assert tiny.num_kv_heads == 4 and tiny.head_dim == 16
    assert tiny.kv_bytes_per_token() == 2 * 2 * 4 * 16 * 2
    with pytest.raises(InputError, match="unknown model 'gpt-17'"):
        resolve_model("gpt-17")
    (tmp_path / "config.json").write_text("{broken")
    with pytest.raises(InputError, match="not valid JSON"):
        resolve_model(str(tmp_path))
    with pytest.raises(InputError, match="unknown GPU 'v100'"):
        get_gpu("v100")


def test_kv_budget_orders_gpus() -> None:
    llama = resolve_model("llama-3.1-8b")
    assert kv_budget_tokens(llama, get_gpu("t4-16gb"), 0.95) == 0  # weights alone exceed the T4
    l4 = kv_budget_tokens(llama, get_gpu("l4-24gb"), 0.95)
    assert 20_000 < l4 < 60_000
    assert kv_budget_tokens(llama, get_gpu("h100-80gb"), 0.95) > 10 * l4
