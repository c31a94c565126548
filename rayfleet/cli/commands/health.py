"""`rayfleet health [-o json] [--link POOL] [--burn NODE]`: per node, per check (on a fleet of cells,
every cell's nodes)."""
from __future__ import annotations

from typing import Any, Optional

import typer
from rich.table import Table

from rayfleet.cli.app import app
from rayfleet.cli.cells import cells_with_pool, federation, federation_pools, node_fleet
from rayfleet.cluster.head.federation_record import FederationRecord
from rayfleet.cli.output import Format, console, emit
from rayfleet.cluster.rayio.connection import connect, ray_driver
from rayfleet.errors import BadInput, FleetNotRunning, NotFound


@app.command()
def health(
    link: Optional[str] = typer.Option(None, "--link", help="run the ring all-reduce test among POOL's nodes"),
    burn: Optional[str] = typer.Option(None, "--burn", help="run the matmul burn on NODE now"),
    output: Format = typer.Option(Format.table, "-o", "--output", help="table, json or yaml"),
    fleet_name: Optional[str] = typer.Option(None, "--fleet", help="fleet name (default: current)"),
) -> None:
    """Node health as the agents report it: heartbeat, raylet probe, and every check's result. A
    fleet of cells shows every cell's nodes, each row with its cell (`-o json`: `cells`, each with
    its own health document)."""
    record = federation(fleet_name)
    if record is not None:
        federated_health(record, link, burn, output)
        return
    conn = connect(fleet_name)
    if link is not None or burn is not None:
        result = _active(conn, link, burn)
        if not emit(result, output):
            _print_active(result)
        return
    doc = conn.store.health()
    if doc is None:
        raise FleetNotRunning(f"fleet {conn.fleet.name}: no health reported yet; wait a few seconds")
    if emit(doc, output):
        return
    console.print(health_table(doc["nodes"]))
    if any(node["simulated"] for node in doc["nodes"]):
        console.print(SIMULATED)


SIMULATED = "GPU telemetry is simulated on nodes without NVIDIA GPUs (`rayfleet chaos inject` writes it)"


def federated_health(record: FederationRecord, link: str | None, burn: str | None, output: Format) -> None:
    """Every cell's health document, or (with --burn) the node's cell's burn, or (with --link) the
    link test in each cell that runs the pool: a ring never spans cells, as a gang never does."""
    if burn is not None:
        result = _active(connect(node_fleet(record.fleet, burn, "health --burn")), None, burn)
        if not emit(result, output):
            _print_active(result)
        return
    if link is not None:
        cells = cells_with_pool(record, link)
        if not cells:
            raise NotFound(f"health --link: pool {link!r} is in no cell of fleet {record.fleet}; pools: "
                           f"{', '.join(federation_pools(record))}")
        results = [{"name": cell.name, "fleet": cell.fleet, **_active(connect(cell.fleet), link, None)}
                   for cell in cells]
        if not emit({"fleet": record.fleet, "pool": link, "cells": results}, output):
            for result in results:
                console.print(f"[bold]cell {result['name']}[/] (fleet {result['fleet']})")
                _print_active(result)
        return
    cells = [cell_health(cell.name, cell.fleet) for cell in record.cells]
    if all("error" in cell for cell in cells):
        raise FleetNotRunning(f"fleet {record.fleet}: no cell answers ({'; '.join(c['error'] for c in cells)})")
    if emit({"fleet": record.fleet, "cells": cells}, output):
        return
    nodes = [{**node, "cell": cell["name"]} for cell in cells for node in cell.get("nodes", ())]
    console.print(f"fleet [bold]{record.fleet}[/]: {len(cells)} cells")
    console.print(health_table(nodes, by_cell=True))
    for cell in cells:
        if "error" in cell:
            console.print(f"cell {cell['name']} does not answer, its nodes are not shown: {cell['error']}",
                          style="dim")
    if any(node["simulated"] for node in nodes):
        console.print(SIMULATED)


def cell_health(name: str, fleet: str) -> dict[str, Any]:
    """One cell's health document under its name; a cell that cannot answer (or has not reported
    yet) gives `error` instead."""
    try:
        doc = connect(fleet).store.health()
    except FleetNotRunning as error:
        return {"name": name, "fleet": fleet, "error": str(error)}
    if doc is None:
        return {"name": name, "fleet": fleet, "error": f"fleet {fleet}: no health reported yet"}
    return {"name": name, "fleet": fleet, **doc}


def health_table(nodes: list[dict[str, Any]], by_cell: bool = False) -> Table:
    """One row per node; with `by_cell`, the node's cell first (each node carries `cell`)."""
    table = Table(box=None, header_style="bold")
    for column in ("CELL",) * by_cell + ("NODE", "STATE", "BEAT", "PROBE", "GPU READINGS", "CHECKS"):
        table.add_column(column, overflow="fold")
    for node in nodes:
        bad = [c for c in node["checks"] if c["status"] != "ok"]
        checks = "; ".join(f"[{'red' if c['status'] == 'fail' else 'yellow'}]{c['name']}[/]: {c['message']}"
                           for c in bad) or ("ok" if node["checks"] else "-")
        beat = f"{node['heartbeat_age_s']:.1f}s" if node["heartbeat_age_s"] is not None else "-"
        name = node["instance"] + (" (spare)" if node["spare"] else "")
        table.add_row(*(node["cell"],) * by_cell, name, node["state"], beat, node["probe"] or "-",
                      _readings(node["checks"]), checks)
    return table


READINGS = (("gpu.temperature", "{:.0f} C"), ("gpu.power", "{:.0f} W"), ("gpu.clocks", "SM {:.0f} MHz"),
            ("gpu.ecc", "ECC {:.0f}"), ("gpu.xid", "XIDs {:.0f}"))
"""The node's worst GPU figures shown in the table (each GPU's are in -o json, the check's message)."""


def _readings(checks: list[dict[str, Any]]) -> str:
    values = {c["name"]: c.get("value") for c in checks}
    shown = [form.format(values[name]) for name, form in READINGS if values.get(name) is not None]
    return ", ".join(shown) or "-"


def _active(conn: Any, link: str | None, burn: str | None) -> dict[str, Any]:
    import ray

    from rayfleet.names import CONTROLLER_NAME, NAMESPACE
    from rayfleet.cluster.health.agent import agent_name

    spec = conn.store.spec()
    with ray_driver(conn.gcs_address):
        if link is not None:
            if spec is None or link not in spec.pool_names:
                raise NotFound(f"health --link: no pool {link!r}; pools: {', '.join(spec.pool_names if spec else [])}")
            controller = ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
            try:
                return ray.get(controller.link_test.remote(link), timeout=600)
            except ray.exceptions.RayTaskError as error:
                raise BadInput(f"health --link {link}: {error.cause}") from None
        try:
            agent = ray.get_actor(agent_name(burn), namespace=NAMESPACE)
        except ValueError:
            raise NotFound(f"health --burn: no health agent on {burn!r}; `rayfleet status` lists the nodes") from None
        return {"node": burn, "burn": ray.get(agent.run_burn.remote(), timeout=600)}


def _print_active(result: dict[str, Any]) -> None:
    if "burn" in result:
        check = result["burn"] or {}
        console.print(f"{result['node']}: {check.get('status', 'no GPUs')} {check.get('message', '')}")
        return
    table = Table(box=None, header_style="bold")
    for column in ("NODE", "LINK MB/s", "RESULT"):
        table.add_column(column)
    for node, check in sorted(result["checks"].items()):
        table.add_row(node, f"{result['bandwidth'].get(node, 0) / 1e6:.0f}", check["message"])
    console.print(table)
    console.print(f"stragglers: {', '.join(result['stragglers']) or 'none'}; sums correct: {result['sum_ok']}")
