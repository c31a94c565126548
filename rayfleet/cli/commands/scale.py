"""`rayfleet scale POOL --nodes N`: set a pool's manual target within [min, max]."""
from __future__ import annotations

from typing import Optional

import typer

from rayfleet.cli.completion import complete_fleet, complete_pool
from rayfleet.cli.app import app
from rayfleet.cli.output import console
from rayfleet.cli.progress import wait_for_pools
from rayfleet.cluster.rayio.connection import connect
from rayfleet.errors import BadInput, FleetNotRunning, NotFound
from rayfleet.cluster.head.local_capacity import check_local_capacity
from rayfleet.cluster.decide.plan import desired_nodes


@app.command()
def scale(
    pool: str = typer.Argument(..., help="pool name", autocompletion=complete_pool),
    nodes: int = typer.Option(..., "--nodes", "-n", help="desired nodes, within the pool's [min_nodes, max_nodes]"),
    wait: bool = typer.Option(False, help="wait until the pool has that many ready nodes"),
    timeout: float = typer.Option(600.0, help="seconds to wait with --wait"),
    fleet_name: Optional[str] = typer.Option(None, "--fleet", help="fleet name (default: current)",
                                             autocompletion=complete_fleet),
) -> None:
    """Set how many nodes POOL should have. The target persists across controller restarts."""
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
