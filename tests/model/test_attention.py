"""The fused attention paths (SDPA is_causal, explicit-mask SDPA, flex_attention) equal
an explicit float64 reference model for every mask and position scheme."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from rayfleet.model import ModelConfig, Transformer

from tests.model.reference import reference_forward

T = 24
MASKS = {
    "causal": {},
    "window": {"window": 5},
    "sinks": {"sinks": 2},  # sinks without a window: everything is visible anyway (= causal)
    "window+sinks": {"window": 5, "sinks": 2},
}
POSITIONS = ["none", "sinusoidal", "learned", "rope", "alibi"]


def make_config(**overrides: object) -> ModelConfig:
    # init_std 0.2 (not 0.02) so that attention patterns move the logits by O(1):
    # a wrong mask or position then shows far above the tolerance.
    base = ModelConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                       max_seq_len=32, mlp_hidden=48, init_std=0.2, attn_backend="sdpa")
    return dataclasses.replace(base, **overrides)


@pytest.mark.parametrize("positions", POSITIONS)
@pytest.mark.parametrize("mask", list(MASKS))
def test_fused_equals_float64_reference(mask: str, positions: str) -> None:
    model = Transformer(make_config(positions=positions, **MASKS[mask]))
    tokens = torch.randint(0, 64, (2, T))
    with torch.no_grad():
        fused = model(tokens).logits
        ref = reference_forward(model, tokens)
    assert fused is not None and fused.dtype == torch.float32
    torch.testing.assert_close(fused.double(), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("positions", ["rope", "alibi"])
def test_reference_comparison_is_sensitive_to_the_mask(positions: str) -> None:
    """Guard against a vacuous grid: a window model differs clearly from full causal."""
    windowed = Transformer(make_config(positions=positions, window=3))
    full = Transformer(make_config(positions=positions))
    full.load_state_dict(windowed.state_dict())
    tokens = torch.randint(0, 64, (2, T))
    with torch.no_grad():
        assert (windowed(tokens).logits - reference_forward(full, tokens)).abs().max() > 1e-2


@pytest.mark.parametrize("overrides", [
    {"positions": "rope", "window": 4, "sinks": 1},
    {"positions": "alibi"},
    {"positions": "alibi", "window": 6, "sinks": 2, "n_kv_heads": None},
    {"positions": "learned", "window": 3},
])
def test_fused_gradients_equal_reference(overrides: dict[str, object]) -> None:
    model = Transformer(make_config(**overrides)).double()
    tokens = torch.randint(0, 64, (2, 16))
    weights = torch.randn(2, 16, 64, dtype=torch.float64)
    (model(tokens).logits * weights).sum().backward()
    fused = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    (reference_forward(model, tokens) * weights).sum().backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(fused[name], p.grad, atol=1e-9, rtol=1e-7, msg=name)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("overrides", [
    {"positions": "rope", "window": 5},
    {"positions": "rope", "window": 5, "sinks": 2},
    {"positions": "alibi"},
    {"positions": "alibi", "window": 7, "sinks": 3},
])
def test_flex_attention_equals_sdpa(overrides: dict[str, object]) -> None:
    """flex_attention (the CUDA path) agrees with explicit-mask SDPA where it runs on CPU
    (forward only: flex has no CPU backward). T=130 spans two 128-token blocks."""
    sdpa = Transformer(make_config(max_seq_len=160, **overrides))
    flex = Transformer(make_config(max_seq_len=160, attn_backend="flex", **overrides))
    flex.load_state_dict(sdpa.state_dict())
    tokens = torch.randint(0, 64, (1, 130))
    with torch.no_grad():
        torch.testing.assert_close(flex(tokens).logits, sdpa(tokens).logits, atol=2e-5, rtol=1e-5)


def test_plain_causal_uses_is_causal_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain causal attention goes to SDPA with is_causal=True and no mask (Flash on GPU)."""
    import torch.nn.functional as F

    calls: list[dict[str, object]] = []
    real = F.scaled_dot_product_attention

    def spy(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    Transformer(make_config(positions="rope"))(torch.randint(0, 64, (1, 8)))
    assert calls and all(c.get("is_causal") is True and c.get("attn_mask") is None for c in calls)


def test_gqa_equals_mha_with_repeated_kv_heads() -> None:
    gqa = Transformer(make_config(n_heads=4, n_kv_heads=2, window=6, positions="rope"))
    mha = Transformer(make_config(n_heads=4, n_kv_heads=None, window=6, positions="rope"))
    state = gqa.state_dict()
    hd, h, kv = 8, 4, 2
    for layer in range(2):
        key = f"layers.{layer}.attn.wqkv.weight"
        wq, wk, wv = state[key].split([h * hd, kv * hd, kv * hd])
        rep = lambda w: w.view(kv, hd, -1).repeat_interleave(h // kv, dim=0).reshape(h * hd, -1)  # noqa: E731
        state[key] = torch.cat([wq, rep(wk), rep(wv)])
    mha.load_state_dict(state)
    tokens = torch.randint(0, 64, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(gqa(tokens).logits, mha(tokens).logits, atol=1e-5, rtol=1e-5)
    gqa_causal = Transformer(make_config(n_kv_heads=2))
    mha_causal = Transformer(make_config(n_kv_heads=None))
    mha_causal.load_state_dict(state)
    gqa_causal.load_state_dict(gqa.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(gqa_causal(tokens).logits, mha_causal(tokens).logits,
                                   atol=1e-5, rtol=1e-5)
