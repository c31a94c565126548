"""`rayfleet status [-o json]`: pools and nodes as the controller last saw them."""
from __future__ import annotations

import time
from typing import Any, Optional

import typer
from rich.table import Table

from rayfleet.cli.completion import complete_fleet
from rayfleet.cli.app import app
from rayfleet.cli.output import Format, age, console, emit, short_instance, table
from rayfleet.cluster.rayio.connection import connect
from rayfleet.cluster.head.federation_record import FederationRecord, read_federation
from rayfleet.cluster.head.fleetdir import FleetDir, resolve_fleet
from rayfleet.errors import FleetNotRunning

STALE_AFTER_S = 10.0


@app.command()
def status(
    output: Format = typer.Option(Format.table, "-o", "--output", help="table, json or yaml"),
    fleet_name: Optional[str] = typer.Option(None, "--fleet", help="fleet name (default: current)",
                                             autocompletion=complete_fleet),
) -> None:
    """Per pool: desired / ready / starting / unhealthy / min / max; per node: pool, state, address.
    A fleet of cells shows each cell (`-o json`: the same document per cell, under `cells`)."""
    fleet = resolve_fleet(fleet_name)
    record = read_federation(fleet)
    if record is not None:
        federated_status(record, output)
        return
    doc, head = fleet_status(fleet_name)
    if emit(doc, output):
        return
    _print_table(doc)
    if head and head.get("message"):
        console.print(head["message"])


def fleet_status(fleet_name: str | None) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """One Ray cluster's status document (what `status -o json` prints for it) and its head's state."""
    fleet = resolve_fleet(fleet_name)
    head = head_state(fleet.path)
    try:
        conn = connect(fleet_name)
    except FleetNotRunning as error:
        raise FleetNotRunning(f"{error}{head_problem(head)}") from None
    doc = conn.store.status()
    if doc is None:
        raise FleetNotRunning(f"fleet {conn.fleet.name}: the controller has not reported yet; "
                              "wait a few seconds, or run `rayfleet up -f FLEET.yaml` again")
    doc["age_s"] = round(max(0.0, time.time() - doc["observed_at"]), 2)
    doc["dashboard_url"] = conn.dashboard_url
    doc["head"] = head
    return doc, head


def cell_status(fleet_name: str) -> dict[str, Any]:
    """A cell's status document; a cell that cannot answer gives `error` (and its head's state)."""
    try:
        doc, _ = fleet_status(fleet_name)
        return doc
    except FleetNotRunning as error:
        return {"fleet": fleet_name, "error": str(error), "head": head_state(FleetDir(fleet_name).path)}


def federated_status(record: FederationRecord, output: Format) -> None:
    cells = [{"name": cell.name, **cell_status(cell.fleet)} for cell in record.cells]
    if all("error" in cell for cell in cells):
        raise FleetNotRunning(f"fleet {record.fleet}: no cell answers ({'; '.join(c['error'] for c in cells)})")
    if emit({"fleet": record.fleet, "cells": cells}, output):
        return
    console.print(f"fleet [bold]{record.fleet}[/]: {len(cells)} cells")
    for doc in cells:
        console.print()
        console.print(f"[bold]cell {doc['name']}[/] (fleet {doc['fleet']})")
        if "error" in doc:
            console.print(f"[red]{doc['error']}[/]")
            continue
        _print_table(doc)
        if doc["head"] and doc["head"].get("message"):
            console.print(doc["head"]["message"])


def head_state(fleet_dir: Any) -> dict[str, Any] | None:
    """The supervisor's view of a local head and its Redis (None for heads rayfleet did not start)."""
    from rayfleet.cluster.head.head import SUPERVISOR_GONE
    from rayfleet.cluster.head.supervisor import read_state, supervisor_process

    state = read_state(fleet_dir)
    if state is None:
        return None
    redis = state.get("redis")
    head = state["head"]
    out = {"fault_tolerant": state["fault_tolerant"], "alive": head["alive"], "restarts": head["restarts"],
           "lost_at": head["lost_at"], "supervisor_alive": supervisor_process(fleet_dir) is not None,
           "redis": None if redis is None else {"alive": redis["alive"], "restarts": redis["restarts"],
                                                 "port": redis["port"]},
           "events": state.get("events", [])[-5:]}
    notes = []
    if redis is not None and not redis["alive"]:
        notes.append("Redis (the GCS's fault-tolerance store) is DOWN; the supervisor is restarting it")
    elif redis is not None and redis["restarts"]:
        notes.append(f"Redis was restarted {redis['restarts']} time(s)")
    if head["restarts"]:
        notes.append(f"the head was restarted {head['restarts']} time(s) (fault tolerance kept the cluster)")
    if not out["supervisor_alive"]:
        notes.append(SUPERVISOR_GONE)
    if not head["alive"] and head["lost_at"]:
        notes.append("the head is LOST" + ("" if state["fault_tolerant"] else
                                           " and fault tolerance is off: `rayfleet down`, then `rayfleet up`"))
    out["message"] = "; ".join(notes)
    return out


def head_problem(head: dict[str, Any] | None) -> str:
    return f" ({head['message']})" if head and head.get("message") else ""


def _print_table(doc: dict[str, Any]) -> None:
    console.print(f"fleet [bold]{doc['fleet']}[/] ({doc['provider']})  dashboard {doc['dashboard_url']}")
    if doc["age_s"] > STALE_AFTER_S:
        console.print(f"[yellow]the controller has not reported for {doc['age_s']:.0f}s[/]")
    console.print(pools_table(doc["pools"]))
    if doc["nodes"]:
        console.print()
        console.print(nodes_table(doc["nodes"], doc["fleet"], time.time()))


def pools_table(pools: list[dict[str, Any]]) -> Table:
    right = {"justify": "right", "no_wrap": True}
    out = table("POOL", ("GPU", {"no_wrap": True}), *((column, right) for column in (
        "DESIRED", "READY", "STARTING", "UNHEALTHY", "DRAINING", "SPARES", "MIN", "MAX")))
    for pool in pools:
        gpu = f"{pool['gpus_per_node']}x{pool['accelerator']}" if pool["accelerator"] else "-"
        out.add_row(pool["name"], gpu, str(pool["desired"]), str(pool["ready"]), str(pool["starting"]),
                    str(pool["unhealthy"]), str(pool["draining"]),
                    f"{pool['spares_ready']}/{pool['spares']}", str(pool["min"]), str(pool["max"]))
    return out


def nodes_table(nodes: list[dict[str, Any]], fleet: str, now: float) -> Table:
    """Node ids without the fleet's name and Ray node ids cut to 8 characters keep it in 80 columns."""
    fixed = {"no_wrap": True}
    out = table(("NODE", {"overflow": "fold", "max_width": 20}), ("POOL", fixed), ("STATE", fixed),
                ("RAY NODE", fixed), ("ADDRESS", fixed), ("FOR", {"no_wrap": True, "justify": "right"}),
                ("REASON", {"overflow": "fold", "ratio": 1}))
    for node in nodes:
        state = node["state"] + (" (spare)" if node["spare"] else "")
        out.add_row(short_instance(node["instance"], fleet), node["pool"], state, (node["node_id"] or "-")[:8],
                    node["address"] or "-", age(now - node["since"]), node["reason"] or "-")
    return out
