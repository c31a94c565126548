"""A fleet of cells as commands reach it: which cell a job goes to, and which cell a job is on.

The decisions are cluster/decide/federation.py's; this reads what they need from each cell (its
status, its head, its unfinished jobs) and finds a job's cell in the federation's placements.
"""
from __future__ import annotations

from typing import Any, Optional

from rayfleet.cluster.decide.federation import CellView, JobAsk, Placement, cell_view, place
from rayfleet.cluster.head.federation_record import FederationRecord, placement_of, placements, read_federation
from rayfleet.cluster.head.fleetdir import FleetDir, resolve_fleet
from rayfleet.errors import FleetNotRunning, NotFound


def federation(fleet_name: Optional[str]) -> FederationRecord | None:
    """The addressed fleet's cells; None for a fleet of one cell."""
    return read_federation(resolve_fleet(fleet_name))


def job_fleet(fleet_name: Optional[str], ident: str) -> Optional[str]:
    """The fleet a command about job `ident` (a name or a submission id) talks to: on a fleet of
    cells, the cell the job was placed on (its newest placement); otherwise the fleet itself."""
    fleet = resolve_fleet(fleet_name)
    if read_federation(fleet) is None:
        return fleet_name
    placement = placement_of(fleet, ident)
    if placement is None:
        raise NotFound(f"job {ident!r}: fleet {fleet.name} placed no such job on any of its cells; "
                              f"`rayfleet jobs` lists them")
    return placement["cell_fleet"]


def views(record: FederationRecord, job_pool: str | None = None,
          held: dict[str, dict[str, int]] | None = None) -> tuple[list[CellView], dict[str, Any]]:
    """Each cell as placement sees it, and the cell fleets' specs (for workers per node).
    `job_pool`: count only that pool's held nodes; `held`: the nodes held, if already read."""
    from rayfleet.cli.commands.status import cell_status
    from rayfleet.cluster.spec.fleet import load_fleet_spec

    held = held_nodes(record) if held is None else held
    out, specs = [], {}
    for cell in record.cells:
        doc = cell_status(cell.fleet)
        status = None if "error" in doc else doc
        busy = held.get(cell.fleet, {})
        if job_pool is not None:
            busy = {job_pool: busy.get(job_pool, 0)}
        out.append(cell_view(cell.name, status, doc.get("head"), busy if status is not None else {}))
        spec_file = FleetDir(cell.fleet).spec_file
        if spec_file.exists():
            specs[cell.name] = load_fleet_spec(spec_file)
    return out, specs


def held_nodes(record: FederationRecord) -> dict[str, dict[str, int]]:
    """Nodes that each cell's unfinished jobs hold, per cell fleet and pool: a placed job's nodes as
    its placement counted them, one for a job submitted to the cell directly. A cell that does not
    answer holds nothing (placement refuses it anyway)."""
    from rayfleet.cluster.rayio.connection import connect
    from rayfleet.jobs.client.submit import TERMINAL, job_client, rayfleet_jobs, storage_of

    fleet = FleetDir(record.fleet)
    nodes_of = {p.get("submission_id"): p["nodes"] for p in placements(fleet)}
    held: dict[str, dict[str, int]] = {}
    for cell in record.cells:
        try:
            conn = connect(cell.fleet)
            jobs = rayfleet_jobs(job_client(conn), storage_of(conn))
        except FleetNotRunning:
            continue
        seen = set()
        pools = held.setdefault(cell.fleet, {})
        for job in jobs:
            if job["job"] in seen:
                continue
            seen.add(job["job"])
            if job["status"] not in TERMINAL and job.get("pool"):
                pools[job["pool"]] = pools.get(job["pool"], 0) + nodes_of.get(job["submission_id"], 1)
    return held


def place_job(record: FederationRecord, spec: Any) -> Placement:
    """Where the job goes, with a reason for every cell (cluster/decide/federation.py's `place`)."""
    from rayfleet.jobs.client.spec import workers_per_node

    cell_views, specs = views(record, spec.pool)
    per_node = next((workers_per_node(spec, s) for s in specs.values() if spec.pool in s.pool_names), 1)
    return place(JobAsk(spec.name, spec.pool, spec.worker_range[0], max(1, per_node)), cell_views)


def cells_with_pool(record: FederationRecord, pool: str) -> list[Any]:
    """The federation's cells that run `pool` (a pool `max_nodes_per_cell` split runs in several),
    read from each cell's own spec in its folder: a cell whose head is down still says it has it."""
    from rayfleet.cluster.spec.fleet import load_fleet_spec

    out = []
    for cell in record.cells:
        spec_file = FleetDir(cell.fleet).spec_file
        if spec_file.exists() and pool in load_fleet_spec(spec_file).pool_names:
            out.append(cell)
    return out


def federation_pools(record: FederationRecord) -> list[str]:
    """Every pool any cell runs, in the cells' order (for messages)."""
    from rayfleet.cluster.spec.fleet import load_fleet_spec

    names: list[str] = []
    for cell in record.cells:
        spec_file = FleetDir(cell.fleet).spec_file
        if spec_file.exists():
            names += [p for p in load_fleet_spec(spec_file).pool_names if p not in names]
    return names


def node_fleet(fleet_name: Optional[str], node: str, command: str) -> Optional[str]:
    """The fleet a command about node `node` (an instance name) talks to: on a fleet of cells, the
    cell whose controller lists the node; otherwise the fleet itself."""
    from rayfleet.cluster.rayio.connection import connect

    record = federation(fleet_name)
    if record is None:
        return fleet_name
    silent = []
    for cell in record.cells:
        try:
            status = connect(cell.fleet).store.status() or {"nodes": []}
        except FleetNotRunning:
            silent.append(cell.name)
            continue
        if any(n["instance"] == node for n in status["nodes"]):
            return cell.fleet
    unanswered = f" (cells that do not answer: {', '.join(silent)})" if silent else ""
    raise NotFound(f"{command}: no node {node!r} in any cell of fleet {record.fleet}{unanswered}; "
                   f"`rayfleet status` lists each cell's nodes")
