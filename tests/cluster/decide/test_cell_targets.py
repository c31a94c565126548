"""`scale POOL --nodes N` on a pool split across cells: one target per cell, summing to N."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rayfleet.cluster.decide.cell_targets import CellPool, CellTarget, bounds, share_target
from rayfleet.cluster.spec.cell_split import share


def targets(nodes: int, cells: list[CellPool]) -> list[int]:
    return [t.nodes for t in share_target(nodes, cells)]


def test_an_even_pool_grows_and_shrinks_near_equal_as_the_split_cut_it() -> None:
    cells = [CellPool(f"c{i}", 1, 4, 2) for i in (1, 2, 3)]
    assert targets(7, cells) == [3, 2, 2]      # the first cells take the remainder, as `share` does
    assert targets(10, cells) == [4, 3, 3]
    assert targets(4, cells) == [2, 1, 1]      # removed from the last cells first
    assert share_target(7, cells)[0] == CellTarget("c1", 2, 3)


def test_no_cell_shrinks_while_the_pool_grows() -> None:
    cells = [CellPool("c1", 0, 10, 7), CellPool("c2", 0, 10, 1)]  # uneven: set per cell with --fleet
    assert targets(10, cells) == [7, 3]
    assert targets(5, cells) == [4, 1]         # shrinking: taken from the largest


def test_each_cell_stays_within_its_bounds() -> None:
    cells = [CellPool("c1", 2, 3, 2), CellPool("c2", 0, 10, 0)]
    assert targets(12, cells) == [3, 9]
    assert targets(2, cells) == [2, 0]
    assert bounds(cells) == (2, 13)
    with pytest.raises(ValueError):
        share_target(14, cells)


def test_a_desired_count_outside_a_changed_spec_is_brought_within_it() -> None:
    assert targets(4, [CellPool("c1", 1, 2, 5), CellPool("c2", 1, 2, 0)]) == [2, 2]


def test_a_pool_in_one_cell_takes_the_whole_target() -> None:
    assert share_target(5, [CellPool("c1", 0, 8, 2)]) == (CellTarget("c1", 2, 5),)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 12), st.integers(0, 40), st.integers(0, 40), st.data())
def test_from_the_split_any_size_in_bounds_is_the_split_of_that_size(count: int, low: int, extra: int,
                                                                     data: st.DataObject) -> None:
    """Pieces cut by `share` from a pool of min..max: scaling from the pool's minimum to N gives
    every piece `share(N)`, exactly what the split gives a pool of N nodes."""
    high = low + extra
    cells = [CellPool(f"c{i}", share(low, count, i), share(high, count, i), share(low, count, i))
             for i in range(count)]
    nodes = data.draw(st.integers(low, high))
    result = targets(nodes, cells)
    assert sum(result) == nodes
    assert result == [share(nodes, count, i) for i in range(count)]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 8), st.integers(0, 15)), min_size=1, max_size=8),
       st.data())
def test_the_targets_sum_to_n_within_bounds_and_move_one_way(pieces: list[tuple[int, int, int]],
                                                           data: st.DataObject) -> None:
    cells = [CellPool(f"c{i}", lo, lo + room, desired) for i, (lo, room, desired) in enumerate(pieces)]
    low, high = bounds(cells)
    nodes = data.draw(st.integers(low, high))
    result = share_target(nodes, cells)
    assert sum(t.nodes for t in result) == nodes
    assert all(c.min_nodes <= t.nodes <= c.max_nodes for c, t in zip(cells, result))
    start = [min(max(c.desired, c.min_nodes), c.max_nodes) for c in cells]
    changes = {(t.nodes > s) - (t.nodes < s) for t, s in zip(result, start)}
    assert not {1, -1} <= changes  # never some cells up and others down
