"""KV-cache generation equals the full forward pass, token by token, for every mask
(including a rolling cache smaller than the sequence) and position scheme."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from rayfleet.model import ModelConfig, Transformer
from rayfleet.model.kv_cache import KVCache
from rayfleet.model.masks import MaskSpec

CASES = {
    "causal-rope": {"positions": "rope"},
    "causal-alibi": {"positions": "alibi"},
    "causal-learned": {"positions": "learned"},
    "causal-sinusoidal": {"positions": "sinusoidal"},
    "window-rope": {"positions": "rope", "window": 4},
    "window-alibi": {"positions": "alibi", "window": 4},
    "sinks-rope": {"positions": "rope", "window": 4, "sinks": 2},
    "sinks-alibi": {"positions": "alibi", "window": 3, "sinks": 1},
    "sinks-none-gqa": {"positions": "none", "window": 5, "sinks": 2, "n_kv_heads": 1},
    "window-moe": {"positions": "rope", "window": 4, "n_experts": 4, "top_k": 2},
}


def make_model(**overrides: object) -> Transformer:
    base = ModelConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                       max_seq_len=40, mlp_hidden=48, init_std=0.2)
    # float64: greedy argmax comparisons must not hinge on float32 rounding near ties
    return Transformer(dataclasses.replace(base, **overrides)).double().eval()


@pytest.mark.parametrize("case", list(CASES))
def test_greedy_generation_equals_full_forward(case: str) -> None:
    model = make_model(**CASES[case])
    prompt = torch.randint(0, 64, (2, 7))
    out = model.generate(prompt, max_new_tokens=14)
    assert out.shape == (2, 21) and torch.equal(out[:, :7], prompt)
    with torch.no_grad():
        logits = model(out).logits
    assert logits is not None
    # each generated token is the argmax of the full forward pass on its prefix
    assert torch.equal(out[:, 7:], logits[:, 6:-1].argmax(-1))


@pytest.mark.parametrize("case", list(CASES))
def test_cached_logits_equal_full_forward(case: str) -> None:
    """Chunked prefill + single-token steps reproduce the full-pass logits; with a window
    the cache holds S + W slots, fewer than the sequence."""
    model = make_model(**CASES[case])
    tokens = torch.randint(0, 64, (2, 20))
    with torch.no_grad():
        full = model(tokens).logits
        caches = model.new_caches(20)
        pieces, start = [], 0
        for size in (6, 1, 1, 5, 1, 1, 1, 1, 1, 1, 1):
            pieces.append(model.decode(tokens[:, start:start + size], start, caches))
            start += size
    cached = torch.cat(pieces, dim=1)
    torch.testing.assert_close(cached, full, atol=1e-10, rtol=1e-10)
    if model.config.window is not None:
        assert caches[0].slots == model.config.window + model.config.sinks < 20


def test_rolling_cache_keeps_sinks_and_last_window() -> None:
    spec = MaskSpec(window=3, sinks=2)
    cache = KVCache(5, spec)
    k = torch.arange(9, dtype=torch.float64).view(1, 1, 9, 1)
    cache.attend_and_store(k, k, start=0)
    assert sorted(cache.pos.tolist()) == [0, 1, 6, 7, 8]
    assert sorted(cache.k.view(-1).tolist()) == [0.0, 1.0, 6.0, 7.0, 8.0]
    one = torch.full((1, 1, 1, 1), 9.0, dtype=torch.float64)
    _, _, positions = cache.attend_and_store(one, one, start=9)
    assert positions.tolist()[-1] == 9
    assert sorted(cache.pos.tolist()) == [0, 1, 7, 8, 9]


def test_sampling_is_reproducible_and_respects_top_k() -> None:
    model = make_model()
    prompt = torch.randint(0, 64, (1, 4))
    a = model.generate(prompt, 8, temperature=1.0, generator=torch.Generator().manual_seed(1))
    b = model.generate(prompt, 8, temperature=1.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    greedy = model.generate(prompt, 8)
    top1 = model.generate(prompt, 8, temperature=0.7, top_k=1, generator=torch.Generator().manual_seed(2))
    assert torch.equal(greedy, top1)


def test_learned_positions_refuse_sequences_past_max_seq_len() -> None:
    model = make_model(positions="learned", max_seq_len=10)
    with pytest.raises(ValueError, match="max_seq_len"):
        model.generate(torch.randint(0, 64, (1, 6)), max_new_tokens=6)
