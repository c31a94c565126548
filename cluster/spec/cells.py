"""A fleet spec -> its cells: each cell a complete one-cell FleetSpec that today's code runs as is.

A spec that declares neither `cells` nor `max_nodes_per_cell` is one cell, the spec itself. With
`cells`, each cell runs the pools it names (whole), under the fleet name `<fleet>-<cell>`, with
its provider fields (region, subnets, Kubernetes context and namespace, head address) in place of
the fleet's. With `max_nodes_per_cell`, pools are cut and packed as cluster/spec/cell_split.py
says: each piece keeps the pool's name and settings, and takes its share of min_nodes, nodes,
max_nodes and hot_spares (a job names a pool; the federation picks the cell). A split that
leaves one cell is the fleet itself, as today. Pure: the spec was validated when it was loaded.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rayfleet.cluster.spec.cell_split import Piece, auto_cell_name, pack, share
from rayfleet.cluster.spec.fleet import CellSpec, FleetSpec
from rayfleet.errors import BadInput


@dataclass(frozen=True, slots=True)
class Cell:
    """One cell: its name in the fleet (`""` for a one-cell fleet) and the spec its Ray cluster runs."""

    name: str
    spec: FleetSpec

    @property
    def pools(self) -> tuple[str, ...]:
        return tuple(self.spec.pool_names)


def fleet_cells(spec: FleetSpec) -> tuple[Cell, ...]:
    """The cells of a fleet, in the spec's order (explicit cells) or the split's (max_nodes_per_cell)."""
    if spec.cells is not None:
        return tuple(_explicit(spec, cell) for cell in spec.cells)
    if spec.max_nodes_per_cell is None:
        return (Cell("", spec),)
    split = pack([(p.name, p.max_nodes, p.hot_spares) for p in spec.pools], spec.max_nodes_per_cell)
    if len(split) == 1 and all(piece.count == 1 for piece in split[0]):
        return (Cell("", _rebuild(spec, spec.name, [p.model_dump() for p in spec.pools])),)
    return tuple(_split(spec, auto_cell_name(index), pieces) for index, pieces in enumerate(split))


def _base(spec: FleetSpec) -> dict[str, Any]:
    data = spec.model_dump()
    data.pop("cells")
    data.pop("max_nodes_per_cell")
    data.pop("federation")  # the federation's, not a cell's
    return data


def _rebuild(spec: FleetSpec, name: str, pools: list[dict[str, Any]], **blocks: Any) -> FleetSpec:
    data = _base(spec)
    data.update(name=name, pools=pools)
    for block, changes in blocks.items():
        if isinstance(changes, dict) and data.get(block) is not None:
            data[block] = {**data[block], **changes}
        elif changes is not None:
            data[block] = changes
    return FleetSpec.model_validate(data)


def _explicit(spec: FleetSpec, cell: CellSpec) -> Cell:
    pools = [spec.pool(name).model_dump() for name in spec.pool_names if name in cell.pools]
    if cell.subnet_ids is not None:
        for pool in pools:
            pool["provider"]["aws"]["subnet_ids"] = list(cell.subnet_ids)
    head = {"address": cell.head_address} if cell.head_address else None
    aws = {"region": cell.region} if cell.region else None
    kubernetes = {key: value for key, value in (("context", cell.context), ("namespace", cell.namespace)) if value}
    return Cell(cell.name, _rebuild(spec, f"{spec.name}-{cell.name}", pools, head=head, aws=aws,
                                    kubernetes=kubernetes or None))


def _split(spec: FleetSpec, name: str, pieces: list[Piece]) -> Cell:
    return Cell(name, _rebuild(spec, f"{spec.name}-{name}", [_piece(spec, piece) for piece in pieces]))


def _piece(spec: FleetSpec, piece: Piece) -> dict[str, Any]:
    """The pool as one cell runs it: its share of every count. Floors and ceilings take their
    remainders on the same pieces, so min_nodes <= nodes <= max_nodes holds in every piece."""
    pool = spec.pool(piece.pool).model_dump()
    count, index = piece.count, piece.index
    pool["min_nodes"] = share(pool["min_nodes"], count, index)
    pool["max_nodes"] = share(pool["max_nodes"], count, index)
    pool["hot_spares"] = share(pool["hot_spares"], count, index, extras_last=True)
    if pool["nodes"] is not None:
        pool["nodes"] = share(pool["nodes"], count, index)
    return pool


def require_one_cell(spec: FleetSpec, file: object, command: str) -> None:
    """BadInput for a spec of several cells given to a command that runs or renders one Ray cluster."""
    cells = fleet_cells(spec)
    if len(cells) > 1:
        names = ", ".join(cell.spec.name for cell in cells[:3]) + (", ..." if len(cells) > 3 else "")
        raise BadInput(f"{file}: cells: the spec makes {len(cells)} cells ({names}), each its own Ray cluster; "
                       f"`rayfleet {command}` handles one cluster, not a fleet of cells: remove "
                       "cells and max_nodes_per_cell, or keep one cell per spec file")
