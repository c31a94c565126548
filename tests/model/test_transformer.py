"""The LM: output contract, fused chunked cross-entropy, parameter and FLOP counts,
initialisation, and a tiny model overfitting one batch."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from rayfleet.model import LMOutput, ModelConfig, Transformer, get_preset, linear_cross_entropy
from rayfleet.model.flops import flops_per_token, param_counts

SMALL = ModelConfig(vocab_size=10, dim=8, n_layers=2, n_heads=2, n_kv_heads=1, max_seq_len=16,
                    mlp_hidden=12, positions="rope")
SMALL_MOE = dataclasses.replace(SMALL, n_experts=4, top_k=2, expert_hidden=6, moe_every=2)


def test_output_contract() -> None:
    model = Transformer(get_preset("tiny_moe"))
    tokens = torch.randint(0, 256, (2, 16))
    out = model(tokens)
    assert isinstance(out, LMOutput) and out.logits is not None and out.loss is None
    assert out.logits.shape == (2, 16, 256) and out.memory is None and out.aux_loss.ndim == 0
    with_targets = model(tokens, tokens)
    assert with_targets.logits is None and with_targets.loss is not None
    torch.testing.assert_close(with_targets.loss, F.cross_entropy(out.logits.reshape(-1, 256), tokens.reshape(-1)))
    assert with_targets.aux_loss > 0
    dense = Transformer(get_preset("tiny"))(tokens, tokens)
    assert dense.aux_loss.item() == 0.0
    with pytest.raises(ValueError, match="memory"):
        Transformer(get_preset("tiny"))(tokens, memory=torch.zeros(2, 1, 64))


def test_learned_positions_reject_long_sequences() -> None:
    model = Transformer(dataclasses.replace(get_preset("tiny"), positions="learned", max_seq_len=8))
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.randint(0, 256, (1, 9)))


@pytest.mark.parametrize("chunk", [1, 8, 1000])
def test_chunked_linear_cross_entropy_equals_full_logits(chunk: int) -> None:
    h = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    targets[::5] = -100  # ignored positions
    loss = linear_cross_entropy(h, w, targets, chunk)
    (3.0 * loss).backward()
    got = (loss.detach(), h.grad.clone(), w.grad.clone())
    h.grad = w.grad = None
    ref = F.cross_entropy(h @ w.T, targets)
    (3.0 * ref).backward()
    torch.testing.assert_close(got[0], ref.detach())
    torch.testing.assert_close(got[1], h.grad)
    torch.testing.assert_close(got[2], w.grad)
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(h, w, targets, chunk), ref.detach())


def test_cross_entropy_with_nothing_to_count_is_zero() -> None:
    h, w = torch.randn(4, 8, requires_grad=True), torch.randn(5, 8)
    loss = linear_cross_entropy(h, w, torch.full((4,), -100))
    loss.backward()
    assert loss.item() == 0.0 and h.grad.abs().max() == 0


def test_param_counts_by_hand() -> None:
    # per layer: wqkv 8*(2+2*1)*4 = 128, wo 64, SwiGLU 3*8*12 = 288, norms 16 -> 496
    # total: 2 * 496 + tied embedding 80 + final norm 8 = 1080
    assert param_counts(SMALL) == (1080, 1080)
    # layer 1 MoE: router 8*4 = 32, experts 4 * 3*8*6 = 576 (active: 2 of them = 288)
    assert param_counts(SMALL_MOE) == (80 + 8 + 496 + (192 + 16 + 32 + 576), 80 + 8 + 496 + (192 + 16 + 32 + 288))
    assert param_counts(dataclasses.replace(SMALL, tie_embeddings=False))[0] == 1080 + 80
    assert param_counts(dataclasses.replace(SMALL, positions="learned"))[0] == 1080 + 16 * 8


@pytest.mark.parametrize("overrides", [
    {}, {"tie_embeddings": False}, {"positions": "learned"}, {"n_kv_heads": None},
    {"n_experts": 4, "top_k": 1, "moe_every": 2}, {"memory_tokens": 2, "segment_len": 8},
])
def test_param_counts_match_the_module(overrides: dict[str, object]) -> None:
    cfg = dataclasses.replace(SMALL, **overrides)
    model = Transformer(cfg)
    assert model.param_counts()[0] == sum(p.numel() for p in model.parameters())


def test_flops_per_token_by_hand() -> None:
    # 6 * N + 12 * L * H * Q * T (PaLM). N = matmul params: blocks 2 * (192 + 288) = 960
    # plus the head 80; attention 12 * 2 * 2 * 4 * 16 = 3072.
    assert flops_per_token(SMALL, 16) == 6 * (960 + 80) + 3072
    assert Transformer(SMALL).flops_per_token(16) == 9312
    # MoE layer 1: router 32 + 2 active experts 288 instead of the dense 288
    assert flops_per_token(SMALL_MOE, 16) == 6 * (192 + 288 + 192 + 32 + 288 + 80) + 3072
    # a window of 4 plus 1 sink bounds the attended keys at 5
    assert flops_per_token(dataclasses.replace(SMALL, window=4, sinks=1), 16) == 6 * 1040 + 12 * 2 * 2 * 4 * 5
    # recurrent memory: blocks also run 2M memory positions per segment of 8
    rmt = dataclasses.replace(SMALL, memory_tokens=2, segment_len=8)
    assert flops_per_token(rmt, 64) == round((8 + 4) / 8 * (6 * 960 + 12 * 2 * 2 * 4 * 12) + 6 * 80)


def test_dense_124m_flops_close_to_gpt2_estimate() -> None:
    cfg = get_preset("dense_124m")
    # nanoGPT's estimate for GPT-2 small at T=1024: 6 * 124M + 12 * 12 * 12 * 64 * 1024
    assert abs(flops_per_token(cfg, 1024) - (6 * 124e6 + 12 * 12 * 12 * 64 * 1024)) / 8.6e8 < 0.01


def test_scaled_residual_init() -> None:
    cfg = dataclasses.replace(get_preset("tiny_moe"), dim=256, n_layers=8, n_heads=4, n_kv_heads=None)
    model = Transformer(cfg)
    std, resid = cfg.init_std, cfg.init_std / math.sqrt(2 * cfg.n_layers)
    block = model.layers[0]
    assert abs(block.attn.wqkv.weight.std().item() - std) < 0.1 * std
    assert abs(block.attn.wo.weight.std().item() - resid) < 0.1 * resid
    assert abs(block.ffn.experts.w2.std().item() - resid) < 0.1 * resid
    assert abs(block.ffn.experts.w1.std().item() - std) < 0.1 * std
    assert torch.equal(block.attn_norm.weight, torch.ones(256))
    assert model.head_weight is model.tok_embeddings.weight  # tied


@pytest.mark.parametrize("name", ["tiny", "tiny_moe"])
def test_tiny_model_overfits_one_batch(name: str) -> None:
    model = Transformer(get_preset(name))
    tokens = torch.randint(0, 256, (4, 33))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    losses = []
    for _ in range(300):
        out = model(tokens[:, :-1], tokens[:, 1:])
        (out.loss + out.aux_loss).backward()
        opt.step()
        opt.zero_grad()
        losses.append(out.loss.item())
        if losses[-1] < 0.05:
            break
    assert losses[0] > 5.0 and losses[-1] < 0.05, losses[-1]
