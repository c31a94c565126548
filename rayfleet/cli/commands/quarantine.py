"""`rayfleet quarantine list|show|release|terminate`: nodes kept aside after a hardware failure.

On a fleet of cells, show, release and terminate go to the node's cell; list takes a cell's fleet."""
from __future__ import annotations

import time
from typing import Any, Optional

import typer
from rich.table import Table

from rayfleet.cli.app import app
from rayfleet.cli.cells import node_fleet
from rayfleet.cli.output import Format, console, emit
from rayfleet.cluster.rayio.connection import Connection, connect
from rayfleet.errors import BadInput, NotFound

quarantine = typer.Typer(help="Nodes quarantined after a hardware check failed: inspect, release, terminate.",
                         no_args_is_help=True)
app.add_typer(quarantine, name="quarantine")


def _quarantined(conn: Connection) -> list[dict[str, Any]]:
    return [n for n in (conn.store.status() or {"nodes": []})["nodes"] if n["state"] == "quarantined"]


def _one(conn: Connection, node: str) -> dict[str, Any]:
    nodes = (conn.store.status() or {"nodes": []})["nodes"]
    record = next((n for n in nodes if n["instance"] == node), None)
    if record is None:
        raise NotFound(f"quarantine: no node {node!r}; nodes: {', '.join(n['instance'] for n in nodes) or 'none'}")
    if record["state"] != "quarantined":
        held = ", ".join(n["instance"] for n in _quarantined(conn)) or "none"
        raise BadInput(f"quarantine: {node} is {record['state']}, not quarantined; quarantined: {held}")
    return record


@quarantine.command("list")
def list_(output: Format = typer.Option(Format.table, "-o", "--output"),
          fleet_name: Optional[str] = typer.Option(None, "--fleet")) -> None:
    """Quarantined nodes, with why and since when."""
    nodes = _quarantined(connect(fleet_name))
    if emit(nodes, output):
        return
    table = Table(box=None, header_style="bold")
    for column in ("NODE", "POOL", "FOR", "REASON"):
        table.add_column(column, overflow="fold")
    for node in nodes:
        table.add_row(node["instance"], node["pool"], f"{time.time() - node['since']:.0f}s", node["reason"])
    console.print(table if nodes else "no node is quarantined")


@quarantine.command("show")
def show(node: str = typer.Argument(...), output: Format = typer.Option(Format.table, "-o", "--output"),
         fleet_name: Optional[str] = typer.Option(None, "--fleet")) -> None:
    """One quarantined node: its checks now and its history of decisions."""
    conn = connect(node_fleet(fleet_name, node, "quarantine show"))
    record = _one(conn, node)
    checks = next((n["checks"] for n in (conn.store.health() or {"nodes": []})["nodes"] if n["instance"] == node), [])
    events = [e.to_json() for e in conn.store.events() if e.instance == node]
    doc = {"node": record, "checks": checks, "events": events}
    if emit(doc, output):
        return
    console.print(f"[bold]{node}[/] quarantined {time.time() - record['since']:.0f}s ago: {record['reason']}")
    for check in checks:
        if check["status"] != "ok":
            console.print(f"  {check['status']:4} {check['name']}: {check['message']}")
    for event in events:
        console.print(f"  {time.strftime('%H:%M:%S', time.localtime(event['time']))} {event['kind']}: {event['message']}")


@quarantine.command("release")
def release(node: str = typer.Argument(...), fleet_name: Optional[str] = typer.Option(None, "--fleet")) -> None:
    """Put the node back in its pool once its checks pass again (they are run at once)."""
    conn = connect(node_fleet(fleet_name, node, "quarantine release"))
    _one(conn, node)
    requests = conn.store.quarantine_requests()
    requests.setdefault("release", {})[node] = time.time()
    conn.store.put_quarantine_requests(requests)
    console.print(f"{node}: release asked; its checks run now and it rejoins the pool only if they pass "
                  f"(`rayfleet quarantine show {node}`)")


@quarantine.command("terminate")
def terminate(node: str = typer.Argument(...), fleet_name: Optional[str] = typer.Option(None, "--fleet")) -> None:
    """Terminate a quarantined node (its replacement already runs)."""
    conn = connect(node_fleet(fleet_name, node, "quarantine terminate"))
    _one(conn, node)
    requests = conn.store.quarantine_requests()
    requests["terminate"] = sorted({*requests.get("terminate", []), node})
    conn.store.put_quarantine_requests(requests)
    console.print(f"{node}: termination asked")
