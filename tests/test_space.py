from __future__ import annotations

import numpy as np
import pytest

from sloguard_lib.errors import InputError
from sloguard_lib.study.space import SearchSpace, build_serving_space, load_space_file, parse_range_override


def test_default_space_has_the_eight_vllm_knobs() -> None:
    space = build_serving_space()
    assert space.names == ["quantization", "max_num_seqs", "max_num_batched_tokens", "gpu_memory_utilization",
                           "max_model_len", "enforce_eager", "enable_chunked_prefill", "enable_prefix_caching"]
    assert (space.knob("max_num_seqs").low, space.knob("max_num_seqs").high) == (4, 128)
    assert space.knob("quantization").choices == ("fp16",)


def test_samples_respect_bounds_and_conditionality() -> None:
    space = build_serving_space()
    rng = np.random.default_rng(0)
    eager_seen = {True: 0, False: 0}
    for _ in range(300):
        params = space.sample(rng)
        space.validate(params)  # raises on any violation
        eager_seen[params["enforce_eager"]] += 1
        assert ("enable_chunked_prefill" in params) == (not params["enforce_eager"])
        assert 512 <= params["max_num_batched_tokens"] <= 8192
    assert min(eager_seen.values()) > 100


def test_finalize_bumps_batched_tokens_only_without_chunked_prefill() -> None:
    space = build_serving_space()
    base = {"quantization": "fp16", "max_num_seqs": 64, "max_num_batched_tokens": 600,
            "gpu_memory_utilization": 0.9, "max_model_len": 3000, "enforce_eager": False,
            "enable_prefix_caching": True}
    assert space.finalize(base | {"enable_chunked_prefill": False})["max_num_batched_tokens"] == 3000
    assert space.finalize(base | {"enable_chunked_prefill": True})["max_num_batched_tokens"] == 600


def test_validate_names_the_bad_knob() -> None:
    space = build_serving_space()
    with pytest.raises(InputError, match="unknown knob 'max_num_seq'"):
        space.validate({"max_num_seq": 8})
    params = space.sample(np.random.default_rng(1)) | {"enforce_eager": True}
    params["enable_chunked_prefill"] = True
    with pytest.raises(InputError, match="enable_chunked_prefill.*inactive"):
        space.validate(params)


def test_overrides_and_errors() -> None:
    space = build_serving_space().with_overrides({"max_num_seqs": {"low": 8, "high": 64},
                                                   "quantization": {"choices": ["fp16", "fp8"]}})
    assert (space.knob("max_num_seqs").low, space.knob("max_num_seqs").high) == (8, 64)
    assert space.knob("quantization").choices == ("fp16", "fp8")
    with pytest.raises(InputError, match="'max_num_seqs': empty range"):
        space.with_overrides({"max_num_seqs": {"low": 64, "high": 8}})
    with pytest.raises(InputError, match="unknown knob 'block_size'"):
        space.with_overrides({"block_size": {"low": 8, "high": 32}})
    with pytest.raises(InputError, match="'quantization': empty list of choices"):
        space.with_overrides({"quantization": {"choices": []}})


def test_max_model_len_cap_and_roundtrip() -> None:
    space = build_serving_space(max_model_len_cap=2000)
    assert space.knob("max_model_len").high == 2000
    assert SearchSpace.from_dict(space.to_dict()) == space
    with pytest.raises(InputError, match="does not fit this GPU"):
        build_serving_space(max_model_len_cap=100)


def test_cli_and_yaml_overrides(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert parse_range_override("max-num-seqs=8:64") == ("max_num_seqs", {"low": 8, "high": 64})
    assert parse_range_override("quantization=fp16,fp8") == ("quantization", {"choices": ["fp16", "fp8"]})
    with pytest.raises(InputError, match="must be numbers"):
        parse_range_override("max_num_seqs=a:b")
    good = tmp_path / "s.yaml"
    good.write_text("max_num_seqs: {low: 8, high: 32}\n")
    assert load_space_file(good) == {"max_num_seqs": {"low": 8, "high": 32}}
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_num_seqs: {low: 8, high: [\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_space_file(bad)
