"""Training data: a real corpus, deterministic per step, the same global batch at any world size."""
from __future__ import annotations

import torch

from rayfleet.jobs.worker.data import StepBatches, corpus_tokens


def test_corpus_is_the_python_reference_as_bytes() -> None:
    tokens = corpus_tokens("python-docs")
    assert tokens.numel() > 400_000 and int(tokens.max()) < 256
    text = bytes(tokens[:200_000].to(torch.uint8).tolist()).decode("utf-8", errors="replace")
    assert "assert" in text and "expression" in text


def test_batches_are_a_pure_function_of_the_step() -> None:
    batches = StepBatches(corpus_tokens(), seq_len=32, global_batch=8, seed=7)
    again = StepBatches(corpus_tokens(), seq_len=32, global_batch=8, seed=7)
    for step in (0, 5, 1000):
        assert torch.equal(batches.batch(step)[0], again.batch(step)[0])
    assert not torch.equal(batches.batch(0)[0], batches.batch(1)[0])
    assert not torch.equal(batches.batch(0)[0], StepBatches(corpus_tokens(), 32, 8, seed=8).batch(0)[0])


def test_rank_slices_compose_the_same_global_batch_at_any_world_size() -> None:
    batches = StepBatches(corpus_tokens(), seq_len=16, global_batch=8, seed=0)
    whole_x, whole_y = batches.batch(3)
    for world in (2, 4, 8):
        parts = [batches.batch(3, rank, world) for rank in range(world)]
        assert torch.equal(torch.cat([x for x, _ in parts]), whole_x)
        assert torch.equal(torch.cat([y for _, y in parts]), whole_y)
    assert torch.equal(whole_x[:, 1:], whole_y[:, :-1])  # targets are inputs shifted by one token
