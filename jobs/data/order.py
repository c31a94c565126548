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


@dataclass(frozen=True)
class EpochOrder:
    windows: int
    global_batch: int
    seed: int

    def __post_init__(self) -> None:
        if self.windows < 1:
            raise ValueError("a corpus needs at least one window")

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, position in it) of the first sample of `step`: where the run stands before it."""
        return divmod(step * self.global_batch, self.windows)

    def windows_at(self, step: int) -> np.ndarray:
        """The global batch's window indices at `step`, in rank order."""
        samples = np.arange(step * self.global_batch, (step + 1) * self.global_batch, dtype=np.int64)
        epochs, positions = np.divmod(samples, self.windows)
        out = np.empty(self.global_batch, dtype=np.int64)
        for epoch in np.unique(epochs):
            chosen = epochs == epoch
            out[chosen] = permutation(self.windows, self.seed, int(epoch))[positions[chosen]]
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
