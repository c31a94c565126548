"""`rayfleet status [-o json]`: pools and nodes as the controller last saw them."""
from __future__ import annotations

import time
from typing import Any, Optional

import typer
from rich.table import Table

from cluster.cli.main import app
from cluster.cli.output import Format, console, emit
from cluster.connection import connect
from cluster.errors import FleetNotRunning

STALE_AFTER_S = 10.0


@app.command()
def status(
    output: Format = typer.Option(Format.table, "-o", "--output", help="table, json or yaml"),
    fleet_name: Optional[str] = typer.Option(None, "--fleet", help="fleet name (default: current)"),
) -> None:
    """Per pool: desired / ready / starting / unhealthy / min / max; per node: pool, state, address."""
    conn = connect(fleet_name)
    doc = conn.store.status()
    if doc is None:
        raise FleetNotRunning(f"fleet {conn.fleet.name}: the controller has not reported yet; "
                              "wait a few seconds, or run `rayfleet up -f FLEET.yaml` again")
    doc["age_s"] = round(max(0.0, time.time() - doc["observed_at"]), 2)
    doc["dashboard_url"] = conn.dashboard_url
    if emit(doc, output):
        return
    _print_table(doc)


def _print_table(doc: dict[str, Any]) -> None:
    console.print(f"fleet [bold]{doc['fleet']}[/] ({doc['provider']})  dashboard {doc['dashboard_url']}")
    if doc["age_s"] > STALE_AFTER_S:
        console.print(f"[yellow]the controller has not reported for {doc['age_s']:.0f}s[/]")
    pools = Table(box=None, header_style="bold")
    for column in ("POOL", "GPU", "DESIRED", "READY", "STARTING", "UNHEALTHY", "DRAINING", "SPARES", "MIN", "MAX"):
        pools.add_column(column, justify="left" if column in ("POOL", "GPU") else "right")
    for pool in doc["pools"]:
        gpu = f"{pool['gpus_per_node']}x{pool['accelerator']}" if pool["accelerator"] else "-"
        pools.add_row(pool["name"], gpu, str(pool["desired"]), str(pool["ready"]), str(pool["starting"]),
                      str(pool["unhealthy"]), str(pool["draining"]),
                      f"{pool['spares_ready']}/{pool['spares']}", str(pool["min"]), str(pool["max"]))
    console.print(pools)
    nodes = Table(box=None, header_style="bold")
    for column in ("NODE", "POOL", "STATE", "RAY NODE", "ADDRESS", "FOR", "REASON"):
        nodes.add_column(column)
    now = time.time()
    for node in doc["nodes"]:
        nodes.add_row(node["instance"] + (" (spare)" if node["spare"] else ""), node["pool"], node["state"],
                      (node["node_id"] or "-")[:12], node["address"] or "-", f"{now - node['since']:.0f}s",
                      node["reason"])
    console.print()
    console.print(nodes)
