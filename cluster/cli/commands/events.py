"""`rayfleet events`: the controller's decisions, each with its reason."""
from __future__ import annotations

import datetime
from typing import Optional

import typer
from rich.table import Table

from cluster.cli.main import app
from cluster.cli.output import Format, console, emit
from cluster.connection import connect


@app.command()
def events(
    pool: Optional[str] = typer.Option(None, help="only this pool"),
    limit: int = typer.Option(50, help="newest N events"),
    output: Format = typer.Option(Format.table, "-o", "--output", help="table, json or yaml"),
    fleet_name: Optional[str] = typer.Option(None, "--fleet", help="fleet name (default: current)"),
) -> None:
    """List launches, replacements, drains and scaling decisions with the reason for each."""
    conn = connect(fleet_name)
    chosen = [event for event in conn.store.events() if pool is None or event.pool == pool][-limit:]
    if emit([event.to_json() for event in chosen], output):
        return
    table = Table(box=None, header_style="bold")
    for column in ("TIME", "KIND", "POOL", "NODE", "MESSAGE", "REASON"):
        table.add_column(column)
    for event in chosen:
        when = datetime.datetime.fromtimestamp(event.time).strftime("%H:%M:%S")
        table.add_row(when, event.kind, event.pool or "-", event.instance or "-", event.message, event.reason)
    console.print(table)
