"""Simulated cells: one SimulatedController per cell, and the view the federation takes of each.

Each cell is its own simulated cloud and Ray cluster with its own controller and clock, as each
real cell is its own Ray cluster; the federation (cluster/decide/federation.py) sees them only
through `CellView`s built here from what a cell's controller knows.
"""
from __future__ import annotations

from dataclasses import dataclass

from rayfleet.cluster.decide.federation import CellHealth, CellView, PoolCapacity
from rayfleet.cluster.sim.simulator import SimulatedController


@dataclass
class SimulatedCell:
    name: str
    controller: SimulatedController
    health: CellHealth = CellHealth()

    def lose_head(self, now: float) -> None:
        """The head dies: the federation sees it lost from `now` (its jobs stop with it)."""
        self.health = CellHealth(head_alive=False, fault_tolerance=self.health.fault_tolerance, lost_since=now)

    def view(self) -> CellView:
        """What the federation reads of this cell: per pool, free nodes, nodes held, the ceiling."""
        controller = self.controller
        held: dict[str, int] = {}
        for record in controller.state.nodes.values():
            if record.state.counts_as_capacity and not record.spare:
                held[record.pool] = held.get(record.pool, 0) + 1
        pools = {pool.name: PoolCapacity(free_nodes=controller.cloud.free_nodes(pool.name),
                                         nodes=held.get(pool.name, 0), max_nodes=pool.max_nodes,
                                         gpus_per_node=pool.gpus_per_node)
                 for pool in controller.spec.pools}
        return CellView(self.name, pools, self.health)
