"""ModelConfig: JSON-friendly, overridable with dataclasses.replace, and it rejects
invalid combinations with a clear ValueError."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
import typing

import pytest

from rayfleet.model import ModelConfig, get_preset


@pytest.mark.parametrize("overrides,message", [
    ({"n_heads": 4, "n_kv_heads": 3}, "divisible by n_kv_heads"),
    ({"dim": 30, "n_heads": 4}, "divisible by n_heads"),
    ({"positions": "xpos"}, "positions="),
    ({"n_experts": 4, "top_k": 5}, "top_k=5 must be <= n_experts=4"),
    ({"positions": "learned", "max_seq_len": 16, "memory_tokens": 4, "segment_len": 12}, "exceeds max_seq_len"),
    ({"memory_tokens": 4}, "needs segment_len"),
    ({"dim": 24, "n_heads": 8}, "even head_dim"),
    ({"window": 0}, "window must be >= 1"),
    ({"sinks": -1}, "sinks must be >= 0"),
    ({"n_experts": 4, "capacity_factor": 0.0}, "capacity_factor"),
    ({"positions": "alibi", "rope_scaling": 2.0}, "only applies to positions='rope'"),
    ({"rope_scaling": 0.5}, "rope_scaling must be >= 1"),
    ({"rope_scaling_type": "yarn"}, "rope_scaling_type"),
    ({"attn_backend": "xformers"}, "attn_backend"),
    ({"expert_backend": "triton"}, "expert_backend"),
    ({"bias_balancing": True}, "bias_balancing needs n_experts"),
    ({"n_experts": 4, "moe_every": 3, "n_layers": 2}, "leaves no MoE layer"),
    ({"dropout": 1.0}, "dropout"),
    ({"vocab_size": 0}, "vocab_size must be >= 1"),
    ({"dim": "64"}, "dim='64' must be of type int"),
    ({"tie_embeddings": 1}, "tie_embeddings=1 must be of type bool"),
    ({"n_layers": True}, "n_layers=True must be of type int"),
    ({"window": 4.0}, "window=4.0 must be of type int | None"),
])
def test_invalid_configs_raise_value_error(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match="invalid ModelConfig") as err:
        ModelConfig(**overrides)  # type: ignore[arg-type]
    assert message in str(err.value)


def test_all_errors_are_reported_together() -> None:
    with pytest.raises(ValueError) as err:
        ModelConfig(n_kv_heads=3, positions="bogus")
    assert "n_kv_heads" in str(err.value) and "positions" in str(err.value)


def test_yaml_style_overrides_with_replace() -> None:
    overrides = json.loads('{"window": 64, "sinks": 4, "n_experts": 8, "top_k": 2, "rope_base": 500000,'
                           ' "capacity_factor": 1, "n_kv_heads": null}')
    cfg = dataclasses.replace(get_preset("tiny"), **overrides)
    assert cfg.window == 64 and cfg.n_experts == 8
    assert isinstance(cfg.rope_base, float) and cfg.rope_base == 500000.0  # int accepted for float
    assert isinstance(cfg.capacity_factor, float)
    assert cfg.kv_heads == cfg.n_heads
    with pytest.raises(ValueError):
        dataclasses.replace(cfg, top_k=9)


def test_config_is_frozen_and_json_roundtrips() -> None:
    cfg = get_preset("tiny_moe")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.dim = 3  # type: ignore[misc]
    assert ModelConfig(**json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_derived_sizes() -> None:
    cfg = ModelConfig(dim=96, n_heads=4, n_kv_heads=2, n_layers=4, n_experts=4, moe_every=2)
    assert cfg.head_dim == 24 and cfg.kv_heads == 2
    assert cfg.ffn_hidden == 256  # 8/3 * 96 = 256, already a multiple of 64
    assert ModelConfig(dim=64).ffn_hidden == 192  # 170 rounded up to 64
    assert [cfg.is_moe_layer(i) for i in range(4)] == [False, True, False, True]
    assert cfg.n_moe_layers == 2 and cfg.moe_hidden == cfg.ffn_hidden


def test_fields_are_keyword_only_and_string_choices_are_literals() -> None:
    with pytest.raises(TypeError):
        ModelConfig(256)  # type: ignore[misc]
    hints = typing.get_type_hints(ModelConfig)
    assert all(hint is not str for hint in hints.values()), "a string option names its choices as a Literal"
    assert typing.get_args(hints["positions"]) == ("sinusoidal", "learned", "rope", "alibi", "none")


def test_config_pickles_copies_and_converts_like_a_value() -> None:
    cfg = dataclasses.replace(get_preset("tiny_moe"), capacity_factor=1)
    assert pickle.loads(pickle.dumps(cfg)) == cfg and copy.deepcopy(cfg) == cfg
    assert hash(cfg) == hash(dataclasses.replace(cfg))
    assert dataclasses.asdict(cfg) == cfg.to_dict() and cfg.to_dict()["capacity_factor"] == 1.0
    assert not hasattr(cfg, "__dict__")  # slots
