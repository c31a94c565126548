"""Cells as the federation sees them, as tests write them: one pool's capacity and the head's health."""
from __future__ import annotations

from rayfleet.cluster.decide.federation import CellHealth, CellView, PoolCapacity


def cell(name: str, free: int, nodes: int | None = None, max_nodes: int | None = None, pool: str = "h100",
         fault_tolerance: bool = False, alive: bool = True, lost_since: float | None = None) -> CellView:
    """Cell `name` with `free` idle nodes of `pool` (8 GPUs each), `nodes` in all (default: free)
    and room up to `max_nodes` (default: nodes); its head alive or lost since `lost_since`."""
    nodes = free if nodes is None else nodes
    capacity = PoolCapacity(free_nodes=free, nodes=nodes, max_nodes=nodes if max_nodes is None else max_nodes,
                            gpus_per_node=8)
    return CellView(name, {pool: capacity}, CellHealth(alive, fault_tolerance, None if alive else lost_since))
