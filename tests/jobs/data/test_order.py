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
