"""How `max_nodes_per_cell` cuts a fleet's pools into cells: integer arithmetic only.

A pool's size is its ceiling, `max_nodes + hot_spares` (what its cell may have to hold). A pool
larger than the cap is cut into the fewest pieces that fit, of near-equal size; pieces are then
packed first-fit, in the spec's order, into cells of at most `max_nodes_per_cell` nodes, never two
pieces of one pool in one cell (a cell has one Ray pool of each name). Deterministic: the same
spec always gives the same cells.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True, slots=True)
class Piece:
    """Share `index` of `count` of a pool, holding up to `size` nodes (max_nodes + hot_spares)."""

    pool: str
    index: int
    count: int
    size: int


def share(total: int, count: int, index: int, extras_last: bool = False) -> int:
    """Piece `index` of `total` cut into `count` near-equal whole parts; the remainder goes one
    each to the first pieces (or the last ones, with `extras_last`)."""
    base, extra = divmod(total, count)
    position = count - 1 - index if extras_last else index
    return base + (1 if position < extra else 0)


def piece_count(size: int, per_cell: int) -> int:
    """The fewest pieces of at most `per_cell` nodes that hold `size` nodes (at least one)."""
    return max(1, -(-size // per_cell))


def piece_size(max_nodes: int, hot_spares: int, count: int, index: int) -> int:
    """Nodes piece `index` holds. Ceilings take their remainder first and spares last, so one
    piece never takes both remainders unless both overflow: no piece exceeds ceil(size / count),
    which `piece_count` keeps within the cap."""
    return share(max_nodes, count, index) + share(hot_spares, count, index, extras_last=True)


def pack(pools: Sequence[tuple[str, int, int]], per_cell: int) -> list[list[Piece]]:
    """(pool, max_nodes, hot_spares) in spec order -> cells, each a list of pieces."""
    cells: list[list[Piece]] = []
    room: list[int] = []
    for name, max_nodes, hot_spares in pools:
        count = piece_count(max_nodes + hot_spares, per_cell)
        for index in range(count):
            piece = Piece(name, index, count, piece_size(max_nodes, hot_spares, count, index))
            for cell, left in enumerate(room):
                if piece.size <= left and all(p.pool != name for p in cells[cell]):
                    cells[cell].append(piece)
                    room[cell] -= piece.size
                    break
            else:
                cells.append([piece])
                room.append(per_cell - piece.size)
    return cells


def auto_cell_name(index: int) -> str:
    """The name of the `index`th cell `max_nodes_per_cell` makes: c1, c2, ..."""
    return f"c{index + 1}"
