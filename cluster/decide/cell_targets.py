"""How `rayfleet scale POOL --nodes N` shares a pool's new size among the cells that run it.

`max_nodes_per_cell` cuts a large pool into near-equal pieces, one per cell
(cluster/spec/cell_split.py), each with its share of min_nodes and max_nodes. Scaling the pool
sets one manual target per cell, summing to N, each within its cell's [min_nodes, max_nodes].
Only the difference moves: growing, each node added goes to the cell with the fewest desired
nodes; shrinking, each node removed comes from the cell with the most. So no cell shrinks while
the pool grows (its running jobs keep their nodes), none grows while it shrinks, and a pool that
was even stays near-equal, as the split cut it. Ties go to the earlier cell when adding and the
later one when removing, so the same cells always give the same targets. Pure.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True, slots=True)
class CellPool:
    """One cell's piece of a pool: its bounds and the nodes it should have now."""

    cell: str
    min_nodes: int
    max_nodes: int
    desired: int


@dataclass(frozen=True, slots=True)
class CellTarget:
    cell: str
    before: int
    nodes: int


def bounds(cells: Sequence[CellPool]) -> tuple[int, int]:
    """The pool's size range across its cells: (sum of min_nodes, sum of max_nodes)."""
    return sum(c.min_nodes for c in cells), sum(c.max_nodes for c in cells)


def share_target(nodes: int, cells: Sequence[CellPool]) -> tuple[CellTarget, ...]:
    """Each cell's target for a pool of `nodes` in all (`bounds(cells)` must hold it)."""
    low, high = bounds(cells)
    if not low <= nodes <= high:
        raise ValueError(f"{nodes} nodes lie outside the cells' bounds {low}..{high}")
    counts = [min(max(c.desired, c.min_nodes), c.max_nodes) for c in cells]
    order = range(len(cells))
    while sum(counts) < nodes:
        grow = min((i for i in order if counts[i] < cells[i].max_nodes), key=lambda i: (counts[i], i))
        counts[grow] += 1
    while sum(counts) > nodes:
        cut = max((i for i in order if counts[i] > cells[i].min_nodes), key=lambda i: (counts[i], i))
        counts[cut] -= 1
    return tuple(CellTarget(c.cell, c.desired, n) for c, n in zip(cells, counts))
