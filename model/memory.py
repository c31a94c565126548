"""Recurrent Memory Transformer (Bulatov et al. 2022, arXiv:2207.06881).

A long sequence is cut into segments of ``segment_len`` tokens. Each segment is run as
    [read memory (M) | segment tokens | write memory (M)]
where both memory blocks are the current memory state: the decoder-only layout of the
RMT paper (section 3), in which causal attention lets segment tokens *read* the memory
placed before them, and the memory placed after them *writes* a summary of the
segment. The final-norm outputs at the write positions become the next segment's
memory (normalised, so its scale stays bounded however many segments are chained).
The first segment's memory is a learned parameter (``Transformer.memory_init``).

Positions restart at 0 in each segment (read memory at 0..M-1). With a sliding window
the read memory counts as attention sinks, so every token can always read it, and the
write memory ignores the window, so it can summarise the whole segment.

Truncated back-propagation through time: the memory entering segment i is detached
when i is a positive multiple of ``bptt_segments``. Segments are thus trained in blocks
of ``bptt_segments``; a segment's loss reaches back through at most ``bptt_segments``
segments (itself included). Segment counting restarts at every call, and the memory
returned in ``LMOutput.memory`` is detached: pass it to the next call to carry context
across calls (no gradient crosses calls).
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import torch
from torch import Tensor, nn

from rayfleet.model.config import ModelConfig
from rayfleet.model.masks import MaskSpec


class SegmentModel(Protocol):
    """What the recurrence needs of the model (``Transformer`` has it)."""

    config: ModelConfig
    spec: MaskSpec  # the model's mask; each segment lets its write memory see past the window
    tok_embeddings: nn.Embedding
    memory_init: nn.Parameter | None  # (M, dim), the first segment's memory

    def run_blocks(self, x: Tensor, *, spec: MaskSpec | None = None) -> tuple[Tensor, Tensor]:
        """Final-norm hidden states and weighted aux loss of embedded inputs ``x``."""
        ...


def segment_forward(model: SegmentModel, tokens: Tensor, memory: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One segment: returns (final hidden of the tokens, new memory, weighted aux loss)."""
    m, t = memory.shape[1], tokens.shape[1]
    x = model.tok_embeddings(tokens)
    mem = memory.to(x.dtype)
    spec = dataclasses.replace(model.spec, global_from=m + t)  # write memory sees all
    h, aux = model.run_blocks(torch.cat((mem, x, mem), dim=1), spec=spec)
    return h[:, m:-m], h[:, -m:], aux


def initial_memory(model: SegmentModel, batch: int) -> Tensor:
    """The learned initial memory, broadcast to ``batch`` sequences: (B, M, dim)."""
    assert model.memory_init is not None
    return model.memory_init.unsqueeze(0).expand(batch, -1, -1)


def recurrent_forward(model: SegmentModel, tokens: Tensor,
                      memory: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Run ``tokens`` (B, T) segment by segment, carrying the memory; see module docstring.

    Returns the final hidden states of all tokens (B, T, dim), the aux loss averaged over
    segments, and the memory after the last segment (detached).
    """
    cfg = model.config
    assert cfg.segment_len is not None
    seg, bptt = cfg.segment_len, cfg.bptt_segments
    if memory is None:
        memory = initial_memory(model, tokens.shape[0])
    hidden: list[Tensor] = []
    aux = torch.zeros((), device=tokens.device)
    n_segments = 0
    for i, start in enumerate(range(0, tokens.shape[1], seg)):
        if i > 0 and i % bptt == 0:
            memory = memory.detach()  # truncate BPTT
        h, memory, a = segment_forward(model, tokens[:, start:start + seg], memory)
        hidden.append(h)
        aux = aux + a
        n_segments += 1
    return torch.cat(hidden, dim=1), aux / max(n_segments, 1), memory.detach()
