"""Training data as batches: a pure function of (seed, step), the same global batch at any world
size, so the data position to checkpoint is just the step, a resumed run sees exactly the batches
an uninterrupted run would, and an elastic run's ranks split the same batches differently.

Two samplers:
- `StepBatches`, the built-in corpus's (jobs/data/builtin.py): step s draws the global batch's
  window offsets at random, with replacement, from a generator seeded with (seed, s);
- `WindowBatches`, every other corpus's (prepared shards, text): windows without replacement
  within an epoch, in a seeded permutation per epoch (jobs/data/order.py), of every window
  (`data.shuffle: windows`) or block by block (`blocks`: read out of whole blocks, the coming
  ones fetched ahead).
Each rank takes its contiguous slice of the global batch. `ValidationBatches` are a fixed set of
windows, the same at every evaluation.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from rayfleet.jobs.client.spec import DataSection
from rayfleet.jobs.data.builtin import CORPORA, corpus_bytes
from rayfleet.jobs.data.order import SPAN_BLOCKS, EpochOrder, block_windows_for, held_out, rank_slice, window_count
from rayfleet.jobs.data.shards import ArrayTokens, BlockReads, TokenShards, TokenView

__all__ = ["CORPORA", "StepBatches", "WindowBatches", "ValidationBatches", "corpus_tokens", "build_data"]


def corpus_tokens(name: str = "python-docs") -> Tensor:
    """The whole built-in corpus as a 1-D int64 tensor of byte values."""
    return torch.from_numpy(corpus_bytes(name).astype(np.int64))


class Batches(Protocol):
    def batch(self, step: int, rank: int = 0, world: int = 1) -> tuple[Tensor, Tensor]: ...
    def position(self, step: int) -> dict[str, int]: ...


def split(windows: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
    windows = torch.as_tensor(windows, dtype=torch.int64)
    return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()


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
        mine = self.offsets(step)[rank_slice(self.global_batch, rank, world)]
        index = mine[:, None] + torch.arange(self.seq_len + 1)[None, :]
        return split(self.tokens[index])

    def position(self, step: int) -> dict[str, int]:
        """Samples drawn before `step` (with replacement there are no epochs)."""
        return {"samples": step * self.global_batch}


class WindowBatches:
    """Windows of `source` without replacement within an epoch (jobs/data/order.py). With
    `shuffle="blocks"` they are read out of whole blocks (jobs/data/shards.py), and each batch
    asks for the blocks this rank's slices of the batches to come lie in, up to a group of blocks
    (`span x block_windows` samples) ahead."""

    def __init__(self, source: Any, seq_len: int, global_batch: int, seed: int, shuffle: str = "windows",
                 block_windows: int | None = None, span: int = SPAN_BLOCKS) -> None:
        windows = window_count(len(source), seq_len)
        if windows < 1:
            raise ValueError(f"corpus of {len(source)} tokens is shorter than seq_len {seq_len} + 1")
        self.source, self.seq_len, self.global_batch = source, seq_len, global_batch
        self.reads: BlockReads | None = None
        if shuffle == "blocks":
            block_windows = block_windows or block_windows_for(seq_len)
            self.order = EpochOrder(windows, global_batch, seed, block_windows, span)
            # a group of blocks being read and the next being fetched: span + 1 blocks each (order.py)
            self.reads = BlockReads(block_windows * seq_len, 2 * (span + 1) + 2)
            self.ahead = -(-span * block_windows // global_batch)  # steps
        else:
            self.order = EpochOrder(windows, global_batch, seed)
        self._asked: tuple[int, int, int] = (-1, 0, 1)  # (last step asked for, rank, world)

    def mine(self, step: int, rank: int, world: int) -> np.ndarray:
        """Token offsets of this rank's windows at `step`."""
        return self.order.windows_at(step)[rank_slice(self.global_batch, rank, world)] * self.seq_len

    def batch(self, step: int, rank: int = 0, world: int = 1) -> tuple[Tensor, Tensor]:
        if self.reads is None:
            return split(self.source.read_many(self.mine(step, rank, world), self.seq_len + 1))
        self.fetch_ahead(step, rank, world)
        return split(self.source.read_many(self.mine(step, rank, world), self.seq_len + 1, self.reads))

    def fetch_ahead(self, step: int, rank: int, world: int) -> None:
        """Ask for the blocks of this rank's windows from `step` to `step + ahead` not asked for yet."""
        last, *placed = self._asked
        first = last + 1 if placed == [rank, world] and step <= last + 1 else step
        for coming in range(max(first, step), step + self.ahead + 1):
            self.source.prefetch(self.mine(coming, rank, world), self.seq_len + 1, self.reads)
        self._asked = (step + self.ahead, rank, world)

    def position(self, step: int) -> dict[str, int]:
        epoch, position = self.order.position(step)
        return {"epoch": epoch, "position": position, "samples": step * self.global_batch}


class ValidationBatches:
    """`batches` global batches of windows, the first windows of the validation split in order
    (wrapping round a small split): the same tokens at every evaluation, so losses compare."""

    def __init__(self, source: Any, seq_len: int, global_batch: int, batches: int) -> None:
        self.windows = window_count(len(source), seq_len)
        if self.windows < 1:
            raise ValueError(f"validation split of {len(source)} tokens is shorter than seq_len {seq_len} + 1")
        self.source, self.seq_len, self.global_batch, self.batches = source, seq_len, global_batch, batches

    def batch(self, index: int, rank: int = 0, world: int = 1) -> tuple[Tensor, Tensor]:
        chosen = np.arange(index * self.global_batch, (index + 1) * self.global_batch) % self.windows
        mine = chosen[rank_slice(self.global_batch, rank, world)]
        return split(self.source.read_many(mine * self.seq_len, self.seq_len + 1))


@dataclass(frozen=True)
class Data:
    train: Batches
    validation: ValidationBatches | None


def open_corpus(data: DataSection) -> Any:
    """The job's training corpus as a token source (len, read, read_many)."""
    if data.tokens:
        return TokenShards.open(data.tokens, data.endpoint_url)
    if data.text:
        from rayfleet.jobs.data.text import all_documents, expand
        from rayfleet.jobs.data.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(data.tokenizer)
        ids = [tokenizer.encode_document(text) for text in all_documents(expand([data.text]))]
        return ArrayTokens(np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64))
    return ArrayTokens(corpus_bytes(data.corpus))


def build_data(data: DataSection, seed: int) -> Data:
    """The job's training batches, and its validation batches if it asks for them."""
    corpus = open_corpus(data)
    validation = data.validation
    train_source, held = corpus, None
    if validation is not None and validation.fraction is not None:
        train_tokens, held_tokens = held_out(len(corpus), validation.fraction)
        train_source, held = TokenView(corpus, 0, train_tokens), TokenView(corpus, train_tokens, held_tokens)
    elif validation is not None and validation.tokens:
        held = TokenShards.open(validation.tokens, data.endpoint_url)
    if data.tokens or data.text:
        train: Batches = WindowBatches(train_source, data.seq_len, data.global_batch, seed, data.shuffle)
    else:  # the built-in corpus keeps its sampler: the demo's and the tests' loss curves stay as they were
        whole = corpus_tokens(data.corpus)
        train = StepBatches(whole[:len(train_source)], data.seq_len, data.global_batch, seed)
    checks = None if held is None else ValidationBatches(held, data.seq_len, data.global_batch,
                                                           validation.eval_batches)  # type: ignore[union-attr]
    return Data(train, checks)


def window_crcs(inputs: Tensor, targets: Tensor) -> Tensor:
    """CRC-32 of each window's token ids (inputs and the last target): a record of exactly which
    tokens a step read, comparable across world sizes once gathered in rank order."""
    windows = torch.cat([inputs, targets[:, -1:]], dim=1).to(torch.int64).cpu().numpy()
    return torch.tensor([zlib.crc32(row.tobytes()) for row in windows], dtype=torch.int64)


def batch_digest(crcs: Tensor) -> str:
    """One hex digest of a global batch from its windows' CRCs in order."""
    return f"{zlib.crc32(crcs.to(torch.int64).numpy().tobytes()):08x}"
