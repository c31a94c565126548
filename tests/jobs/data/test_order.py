"""The order windows are read in: once per epoch, a pure function of (seed, step), the same
global batch at any world size."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from rayfleet.jobs.data.order import EpochOrder, held_out, rank_slice, window_count


@settings(max_examples=60, deadline=None)
@given(windows=st.integers(1, 300), batch=st.integers(1, 17), seed=st.integers(0, 2**31))
def test_every_window_is_read_once_per_epoch(windows: int, batch: int, seed: int) -> None:
    order = EpochOrder(windows, batch, seed)
    epochs = 3
    steps = -(-windows * epochs // batch) + 1
    read = np.concatenate([order.windows_at(s) for s in range(steps)])[:windows * epochs]
    for epoch in range(epochs):
        assert sorted(read[epoch * windows:(epoch + 1) * windows]) == list(range(windows))


def test_epochs_are_shuffled_differently_and_seeds_differ() -> None:
    order = EpochOrder(1000, 10, seed=3)
    first = np.concatenate([order.windows_at(s) for s in range(100)])
    second = np.concatenate([order.windows_at(s) for s in range(100, 200)])
    assert not np.array_equal(first, second)
    assert not np.array_equal(order.windows_at(0), EpochOrder(1000, 10, seed=4).windows_at(0))


def test_the_order_depends_on_the_step_only() -> None:
    a, b = EpochOrder(97, 8, 1), EpochOrder(97, 8, 1)
    late = b.windows_at(41)  # a fresh order (a resumed run) asked for a late step first
    assert np.array_equal(a.windows_at(41), late)
    assert a.position(41) == divmod(41 * 8, 97)


def test_rank_slices_tile_the_global_batch() -> None:
    for world in (1, 2, 4, 8):
        covered = np.concatenate([np.arange(8)[rank_slice(8, r, world)] for r in range(world)])
        assert covered.tolist() == list(range(8))


def test_window_count_and_held_out_tail() -> None:
    assert window_count(129, 128) == 1 and window_count(128, 128) == 0 and window_count(1000, 10) == 99
    assert held_out(1000, 0.1) == (900, 100)


def test_the_windows_order_of_existing_jobs_is_unchanged() -> None:
    # EpochOrder(1000, 8, 7) before the "blocks" order existed (commit 54439db)
    order = EpochOrder(1000, 8, 7)
    assert order.windows_at(3).tolist() == [88, 908, 426, 776, 722, 331, 957, 793]
    assert order.windows_at(130).tolist() == [164, 825, 575, 460, 503, 235, 707, 404]


@settings(max_examples=60, deadline=None)
@given(windows=st.integers(1, 400), batch=st.integers(1, 17), seed=st.integers(0, 2**31),
       block=st.integers(1, 40), span=st.integers(1, 5))
def test_the_blocks_order_reads_every_window_once_per_epoch_a_group_of_blocks_at_a_time(
        windows: int, batch: int, seed: int, block: int, span: int) -> None:
    order = EpochOrder(windows, batch, seed, block_windows=block, span=span)
    for epoch in range(2):
        read = order.samples(epoch * windows, windows)
        assert sorted(read.tolist()) == list(range(windows))
        for first in range(0, windows, span * block):  # a group touches at most span + 1 blocks
            assert len(set((read[first:first + span * block] // block).tolist())) <= span + 1
    assert np.array_equal(order.windows_at(5), EpochOrder(windows, batch, seed, block, span).windows_at(5))


def test_the_blocks_order_mixes_blocks_and_differs_per_epoch() -> None:
    order = EpochOrder(4096, 64, seed=1, block_windows=64, span=4)
    first = order.windows_at(0)
    assert len(set((first // 64).tolist())) == 4  # one batch draws from every block of its group
    assert not np.array_equal(order.samples(0, 4096), order.samples(4096, 4096))
    assert not np.array_equal(first, EpochOrder(4096, 64, seed=2, block_windows=64, span=4).windows_at(0))
