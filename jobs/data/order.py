"""The order a job visits its corpus in: without replacement within an epoch, a pure function of
(seed, step). No I/O.

The corpus is cut into `windows` windows of seq_len + 1 tokens (window i starts at token
i x seq_len, so neighbours share one token: the last target of one is the first input of the
next, as nanoGPT and Megatron cut them). Sample g of the run (step s holds samples
s x global_batch ... + global_batch - 1) is in epoch g // windows at position g % windows, and
reads window permutation(seed, epoch)[position]. So every window is read once per epoch, the
checkpoint's data position is the step, a resumed run reads exactly what an uninterrupted one
would, and the global batch is the same whatever the world size (each rank takes its contiguous
slice).

Two permutations (the job's `data.shuffle`):
- "windows": any window may follow any other. From object storage that costs one ranged GET per
  window, so a GET's latency bounds the loader.
- "blocks": blocks of `block_windows` consecutive windows are visited in a seeded order, and the
  windows of each group of `span` consecutive blocks of that order in a seeded permutation of their
  own (MosaicML streaming's shuffle blocks). A stretch of `span x block_windows` samples then
  touches at most `span + 1` blocks, which a reader fetches whole (jobs/data/shards.py), while a
  global batch still mixes windows from `span` places of the corpus. A global batch is listed
  block by block, so each rank's slice of it lies in few blocks.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np


def window_count(tokens: int, seq_len: int) -> int:
    """How many windows of seq_len + 1 tokens, seq_len apart, a corpus of `tokens` holds."""
    return max(0, (tokens - 1) // seq_len)


@functools.lru_cache(maxsize=4)
def permutation(windows: int, seed: int, epoch: int) -> np.ndarray:
    """Epoch `epoch`'s order of the windows (PCG64 seeded with (seed, epoch)); cached: a step
    reads from at most two epochs."""
    order = np.random.Generator(np.random.PCG64([seed, epoch])).permutation(windows)
    return order.astype(np.int32 if windows < 2**31 else np.int64)


# "blocks": a block is about 1M tokens (2 MiB of uint16: one GET whose latency is amortised over
# 1024 windows of 1024 tokens) and a group of 16 blocks mixes 16M tokens; a reader holds a group
# and fetches the next, about 2 x 17 blocks (72 MiB of uint16 per rank; bench/data_loader.py)
BLOCK_TOKENS = 1 << 20
SPAN_BLOCKS = 16


def block_windows_for(seq_len: int) -> int:
    """Windows in one block of about BLOCK_TOKENS tokens."""
    return max(1, BLOCK_TOKENS // seq_len)


@functools.lru_cache(maxsize=4)
def block_permutation(windows: int, seed: int, epoch: int, block_windows: int, span: int) -> np.ndarray:
    """Epoch `epoch`'s order of the windows, block by block: a seeded order of the blocks of
    `block_windows` consecutive windows (the last may be short), then a seeded permutation within
    every `span x block_windows` consecutive positions. A generator of its own ((seed, epoch, 1)),
    so no stream of the "windows" order is reused."""
    generator = np.random.Generator(np.random.PCG64([seed, epoch, 1]))
    blocks = -(-windows // block_windows)
    ids = (generator.permutation(blocks)[:, None] * block_windows + np.arange(block_windows)[None, :]).ravel()
    ids = ids[ids < windows]
    groups = np.arange(windows) // (span * block_windows)
    order = ids[np.lexsort((generator.random(windows), groups))]
    return order.astype(np.int32 if windows < 2**31 else np.int64)


@dataclass(frozen=True)
class EpochOrder:
    windows: int
    global_batch: int
    seed: int
    block_windows: int = 0  # 0: the "windows" permutation; else "blocks" of this many windows
    span: int = SPAN_BLOCKS

    def __post_init__(self) -> None:
        if self.windows < 1:
            raise ValueError("a corpus needs at least one window")
        if self.block_windows < 0 or self.span < 1:
            raise ValueError(f"blocks of {self.block_windows} windows in groups of {self.span}: both must be positive")

    def permutation(self, epoch: int) -> np.ndarray:
        if self.block_windows:
            return block_permutation(self.windows, self.seed, epoch, self.block_windows, self.span)
        return permutation(self.windows, self.seed, epoch)

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, position in it) of the first sample of `step`: where the run stands before it."""
        return divmod(step * self.global_batch, self.windows)

    def windows_at(self, step: int) -> np.ndarray:
        """The global batch's window indices at `step`, in rank order. In the "blocks" order they
        are sorted by block (stably, within each epoch): the batch is the same set, but each rank's contiguous slice
        comes from a few blocks of the group rather than from all of them, so a rank fetches
        about 1/world of a group's blocks instead of every one."""
        first = step * self.global_batch
        out = self.samples(first, self.global_batch)
        if self.block_windows:  # by block within each epoch: epoch e's windows still precede e + 1's
            epochs = np.arange(first, first + self.global_batch) // self.windows
            out = out[np.lexsort((out // self.block_windows, epochs))]
        return out

    def samples(self, first: int, count: int) -> np.ndarray:
        """The window indices of samples [first, first + count) of the run."""
        samples = np.arange(first, first + count, dtype=np.int64)
        epochs, positions = np.divmod(samples, self.windows)
        out = np.empty(count, dtype=np.int64)
        for epoch in np.unique(epochs):
            chosen = epochs == epoch
            out[chosen] = self.permutation(int(epoch))[positions[chosen]]
        return out


def rank_slice(global_batch: int, rank: int, world: int) -> slice:
    """Rank `rank`'s contiguous part of a global batch split among `world` ranks."""
    if global_batch % world:
        raise ValueError(f"global batch {global_batch} does not divide among {world} ranks")
    per_rank = global_batch // world
    return slice(rank * per_rank, (rank + 1) * per_rank)


def held_out(tokens: int, fraction: float) -> tuple[int, int]:
    """(training tokens, validation tokens) when the last `fraction` of a corpus is held out for
    validation: a contiguous tail, so no training window overlaps a validation one."""
    validation = int(tokens * fraction)
    return tokens - validation, validation
