"""`rayfleet scale POOL --nodes N`: set a pool's manual target within [min, max].

On a fleet of cells, N is the pool's size in all: each cell that runs part of the pool gets its
share as its own manual target (cluster/decide/cell_targets.py says how N is shared)."""
from __future__ import annotations

import time
from typing import Any, Optional

import typer

from rayfleet.cli.completion import complete_fleet, complete_pool
from rayfleet.cli.app import app
from rayfleet.cli.cells import cells_with_pool, federation, federation_pools
from rayfleet.cli.output import console
from rayfleet.cli.progress import wait_for_pools
from rayfleet.cluster.rayio.connection import connect
from rayfleet.errors import BadInput, FleetNotRunning, NotFound
from rayfleet.cluster.head.local_capacity import check_local_capacity
from rayfleet.cluster.decide.cell_targets import CellPool, bounds, share_target
from rayfleet.cluster.decide.plan import desired_nodes
from rayfleet.cluster.head.federation_record import FederationRecord


@app.command()
def scale(
    pool: str = typer.Argument(..., help="pool name", autocompletion=complete_pool),
    nodes: int = typer.Option(..., "--nodes", "-n", help="desired nodes, within the pool's [min_nodes, max_nodes]"),
    wait: bool = typer.Option(False, help="wait until the pool has that many ready nodes"),
    timeout: float = typer.Option(600.0, help="seconds to wait with --wait"),
    fleet_name: Optional[str] = typer.Option(None, "--fleet", help="fleet name (default: current)",
                                             autocompletion=complete_fleet),
) -> None:
    """Set how many nodes POOL should have. The target persists across controller restarts. On a
    fleet of cells, N is the pool's total, shared among the cells that run it."""
    record = federation(fleet_name)
    if record is not None:
        scale_cells(record, pool, nodes, wait, timeout)
        return
    conn = connect(fleet_name)
    spec = conn.store.spec()
    if spec is None:
        raise FleetNotRunning(f"fleet {conn.fleet.name} has no spec stored; run `rayfleet up -f FLEET.yaml`")
    if pool not in spec.pool_names:
        raise NotFound(f"scale: pool {pool!r} is not in fleet {spec.name}; pools: {', '.join(spec.pool_names)}")
    pool_spec = spec.pool(pool)
    if not pool_spec.min_nodes <= nodes <= pool_spec.max_nodes:
        raise BadInput(f"scale {pool} --nodes: got {nodes}: must lie within min_nodes..max_nodes "
                       f"({pool_spec.min_nodes}..{pool_spec.max_nodes}) of {conn.fleet.spec_file}; "
                       "change the spec's limits and `rayfleet up` again to go beyond them")
    targets = conn.store.targets()
    before = desired_nodes(pool_spec, targets)
    if spec.capabilities.nodes_on_this_machine and nodes > before:
        check_local_capacity(nodes - before, f"scale {pool} --nodes {nodes}")
    conn.store.put_targets({**targets, pool: nodes})
    console.print(f"pool {pool}: desired {before} -> {nodes}")
    if wait:
        wait_for_pools(conn.store, spec.name, timeout)


def scale_cells(record: FederationRecord, pool: str, nodes: int, wait: bool, timeout: float) -> None:
    """Each cell that runs POOL gets its share of N (nothing changes unless every such cell answers
    and N lies within the pool's bounds summed over them)."""
    cells = cells_with_pool(record, pool)
    if not cells:
        raise NotFound(f"scale: pool {pool!r} is in no cell of fleet {record.fleet}; pools: "
                       f"{', '.join(federation_pools(record))}")
    reached = []
    for cell in cells:  # read every cell before changing any
        conn = _connect_cell(cell, cells, pool)
        spec = conn.store.spec()
        if spec is None:
            raise FleetNotRunning(f"scale {pool}: cell {cell.name} (fleet {cell.fleet}) has no spec stored yet")
        pool_spec = spec.pool(pool)
        targets = conn.store.targets()
        reached.append((cell, spec.capabilities.nodes_on_this_machine, CellPool(
            cell.name, pool_spec.min_nodes, pool_spec.max_nodes, desired_nodes(pool_spec, targets))))
    pieces = [piece for *_, piece in reached]
    low, high = bounds(pieces)
    where = f"cell {cells[0].name}" if len(cells) == 1 else f"cells {', '.join(c.name for c in cells)}"
    if not low <= nodes <= high:
        raise BadInput(f"scale {pool} --nodes: got {nodes}: pool {pool} of fleet {record.fleet} runs in {where} "
                       f"with min_nodes..max_nodes {low}..{high} in all; change the spec's limits and "
                       "`rayfleet up` again to go beyond them")
    shares = share_target(nodes, pieces)
    growth = sum(max(0, t.nodes - t.before) for t in shares)
    if growth and any(local for _, local, _ in reached):
        check_local_capacity(growth, f"scale {pool} --nodes {nodes}")
    for done, (cell, target) in enumerate(zip(cells, shares)):
        # connected again, one cell at a time: a connection authenticates with its cell's token,
        # and a process holds one Ray token at a time (cluster/rayio/connection.py use_token)
        try:
            store = connect(cell.fleet).store
        except FleetNotRunning as error:
            changed = ", ".join(f"{t.cell} -> {t.nodes}" for t in shares[:done])
            raise FleetNotRunning(f"scale {pool}: cell {cell.name} stopped answering ({error}) after these cells "
                                  f"took their part: {changed}; run the same scale again once it answers") from None
        store.put_targets({**store.targets(), pool: target.nodes})
    parts = ", ".join(f"{t.cell} {t.before} -> {t.nodes}" for t in shares)
    console.print(f"pool {pool}: desired {sum(t.before for t in shares)} -> {nodes} in {where} ({parts})")
    if wait:
        deadline = time.monotonic() + timeout
        for cell in cells:
            wait_for_pools(_connect_cell(cell, cells, pool).store, cell.fleet, max(1.0, deadline - time.monotonic()))


def _connect_cell(cell: Any, cells: list[Any], pool: str) -> Any:
    """The cell's connection; FleetNotRunning naming the other cells of the pool if it does not answer."""
    try:
        return connect(cell.fleet)
    except FleetNotRunning as error:
        others = [c.fleet for c in cells if c is not cell]
        hint = (f"; `rayfleet scale {pool} --nodes N --fleet CELL` sets one answering cell's part "
                f"({', '.join(others)})" if others else "")
        raise FleetNotRunning(f"scale {pool}: cell {cell.name}, which runs part of pool {pool}, does not "
                              f"answer ({error}); nothing was changed{hint}") from None
