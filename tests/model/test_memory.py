"""Recurrent memory: later segments depend on earlier ones through the memory, and
truncated BPTT lets gradients through at most ``bptt_segments`` segments."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from rayfleet.model import ModelConfig, Transformer

SEG, M = 8, 3


def rmt(**overrides: object) -> Transformer:
    base = ModelConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, max_seq_len=32, mlp_hidden=48,
                       init_std=0.2, memory_tokens=M, segment_len=SEG, bptt_segments=4)
    return Transformer(dataclasses.replace(base, **overrides)).double()


@pytest.mark.parametrize("overrides", [{}, {"window": 2}, {"positions": "learned"}])
def test_later_segment_depends_on_earlier_segment(overrides: dict[str, object]) -> None:
    model = rmt(**overrides)
    tokens = torch.randint(0, 64, (2, 4 * SEG))
    changed = tokens.clone()
    changed[:, 1] = (changed[:, 1] + 1) % 64  # a token of segment 0
    with torch.no_grad():
        a, b = model(tokens).logits, model(changed).logits
    assert (a[:, 3 * SEG:] - b[:, 3 * SEG:]).abs().max() > 1e-6  # segment 3 sees it via memory
    later = changed.clone()
    later[:, -1] = (later[:, -1] + 1) % 64  # a token of the last segment
    with torch.no_grad():
        c = model(later).logits
    assert torch.equal(b[:, :3 * SEG], c[:, :3 * SEG])  # causality across segments


def test_memory_is_the_only_channel_between_segments() -> None:
    model = rmt()
    tokens = torch.randint(0, 64, (1, 2 * SEG))
    with torch.no_grad():
        out = model(tokens[:, :SEG])
        memory = out.memory
        full = model(tokens).logits
        second = model(tokens[:, SEG:], memory=memory).logits
        fresh = model(tokens[:, SEG:]).logits
    assert memory is not None and memory.shape == (1, M, 32)
    torch.testing.assert_close(second, full[:, SEG:])  # carrying memory across calls = one call
    assert (fresh - full[:, SEG:]).abs().max() > 1e-6  # the initial memory differs from it


def segment_grads(model: Transformer, tokens: torch.Tensor, memory: torch.Tensor) -> list[bool]:
    """Which segments' token embeddings receive gradient from the last segment's loss."""
    embedded: list[torch.Tensor] = []

    def keep(_: object, __: object, out: torch.Tensor) -> None:
        out.retain_grad()
        embedded.append(out)

    handle = model.tok_embeddings.register_forward_hook(keep)
    targets = torch.full_like(tokens, -100)
    targets[:, -SEG:] = torch.randint(0, 64, (tokens.shape[0], SEG))  # loss on the last segment only
    model(tokens, targets, memory=memory).loss.backward()
    handle.remove()
    return [e.grad is not None and e.grad.abs().max().item() > 0 for e in embedded]


@pytest.mark.parametrize("bptt,expected", [
    (1, [False, False, False, False, True]),
    (2, [False, False, False, False, True]),  # segment 4 starts a block of 2
    (3, [False, False, False, True, True]),
    (5, [True, True, True, True, True]),
])
def test_bptt_truncation(bptt: int, expected: list[bool]) -> None:
    model = rmt(bptt_segments=bptt)
    tokens = torch.randint(0, 64, (2, 5 * SEG))
    memory = torch.randn(2, M, 32, dtype=torch.float64, requires_grad=True)
    assert segment_grads(model, tokens, memory) == expected
    reaches_input_memory = memory.grad is not None and memory.grad.abs().max().item() > 0
    assert reaches_input_memory == all(expected)


def test_rmt_loss_is_mean_over_all_tokens() -> None:
    model = rmt()
    tokens = torch.randint(0, 64, (2, 3 * SEG + 5))  # ragged last segment
    targets = torch.randint(0, 64, tokens.shape)
    with torch.no_grad():
        logits = model(tokens).logits
        loss = model(tokens, targets).loss
    assert logits.shape == (2, 3 * SEG + 5, 64)
    torch.testing.assert_close(loss, F.cross_entropy(logits.reshape(-1, 64), targets.reshape(-1)))


def test_memory_init_is_learned() -> None:
    model = rmt()
    tokens = torch.randint(0, 64, (2, 2 * SEG))
    model(tokens, tokens).loss.backward()
    assert model.memory_init is not None and model.memory_init.grad.abs().max() > 0
