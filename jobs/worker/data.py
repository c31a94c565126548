"""Training data: a real text corpus that ships with Python, byte-tokenised, batched by step.

The corpus is the Python Language Reference as `pydoc_data.topics` ships it with every CPython
(79 topics, ~466 KB of English prose and code), so a job needs no download at run time.
Tokens are bytes (a vocabulary of 256, the byte level of GPT-2's BPE without merges).

Batches are a pure function of (seed, step): step s draws the global batch's window offsets from
a generator seeded with (seed, s) and each rank takes its contiguous slice. So the data position
to checkpoint is just the step, a resumed run sees exactly the batches an uninterrupted run
would, and the global batch is the same whatever the world size (elastic runs, DDP vs 1 worker).
"""
from __future__ import annotations

import functools

import torch
from torch import Tensor

CORPORA = ("python-docs",)


@functools.lru_cache(maxsize=None)
def corpus_tokens(name: str = "python-docs") -> Tensor:
    """The whole corpus as a 1-D int64 tensor of byte values."""
    if name != "python-docs":
        raise ValueError(f"unknown corpus {name!r}; available: {', '.join(CORPORA)}")
    import pydoc_data.topics

    text = "\n\n".join(pydoc_data.topics.topics[key] for key in sorted(pydoc_data.topics.topics))
    return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).to(torch.int64)


class StepBatches:
    """Global batch `global_batch` x (seq_len + 1) windows per step; rank r's slice of it."""

    def __init__(self, tokens: Tensor, seq_len: int, global_batch: int, seed: int) -> None:
        if tokens.numel() <= seq_len + 1:
            raise ValueError(f"corpus of {tokens.numel()} tokens is shorter than seq_len {seq_len}")
        self.tokens = tokens
        self.seq_len = seq_len
        self.global_batch = global_batch
        self.seed = seed

    def offsets(self, step: int) -> Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        return torch.randint(0, self.tokens.numel() - self.seq_len - 1, (self.global_batch,), generator=generator)

    def batch(self, step: int, rank: int = 0, world: int = 1) -> tuple[Tensor, Tensor]:
        """(inputs, targets), each (global_batch / world, seq_len), for this rank at this step."""
        if self.global_batch % world:
            raise ValueError(f"global batch {self.global_batch} does not divide among {world} ranks")
        per_rank = self.global_batch // world
        mine = self.offsets(step)[rank * per_rank:(rank + 1) * per_rank]
        index = mine[:, None] + torch.arange(self.seq_len + 1)[None, :]
        windows = self.tokens[index]
        return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()
