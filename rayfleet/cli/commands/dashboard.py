"""`rayfleet dashboard [-o json] [--show-token]`: the Ray dashboard's URL, views and sign-in; on a fleet
of cells, each cell's, and where Prometheus finds every cell's metrics."""
from __future__ import annotations

from typing import Any, Optional

import typer
from rich.table import Table

from rayfleet.cli.completion import complete_fleet
from rayfleet.cli.app import app
from rayfleet.cli.cells import federation
from rayfleet.cluster.head.federation_record import FederationRecord
from rayfleet.cluster.head.fleetdir import FleetDir
from rayfleet.errors import FleetNotRunning
from rayfleet.cli.output import Format, console, emit
from rayfleet.cluster.rayio.connection import connect


@app.command()
def dashboard(
    show_token: bool = typer.Option(False, "--show-token", help="also print the fleet's token (a secret)"),
    output: Format = typer.Option(Format.table, "-o", "--output", help="table, json or yaml"),
    fleet_name: Optional[str] = typer.Option(None, "--fleet", help="fleet name (default: current)",
                                             autocompletion=complete_fleet),
) -> None:
    """Where the Ray dashboard is, what each view shows, and how to sign in with the fleet's token.
    A fleet of cells shows each cell's dashboard and where Prometheus finds every cell's metrics."""
    from rayfleet.cluster.rayio.dashboard import describe

    record = federation(fleet_name)
    if record is not None:
        federated_dashboard(record, show_token, output)
        return
    doc = describe(connect(fleet_name), show_token=show_token)
    if emit(doc, output):
        return
    _print(doc)


def federated_dashboard(record: FederationRecord, show_token: bool, output: Format) -> None:
    """Each cell's dashboard document (`error` for a cell that does not answer) and the federation's
    Prometheus targets file, whose groups carry the labels `federation` and `cell`."""
    from rayfleet.cluster.head.federation_record import METRICS_TARGETS
    from rayfleet.cluster.rayio.dashboard import describe

    cells = []
    for cell in record.cells:
        try:
            cells.append({"name": cell.name, **describe(connect(cell.fleet), show_token=show_token)})
        except FleetNotRunning as error:
            cells.append({"name": cell.name, "fleet": cell.fleet, "error": str(error)})
    if all("error" in cell for cell in cells):
        raise FleetNotRunning(f"fleet {record.fleet}: no cell answers ({'; '.join(c['error'] for c in cells)})")
    targets = FleetDir(record.fleet).path / METRICS_TARGETS
    doc = {"fleet": record.fleet, "cells": cells,
           "metrics": {"service_discovery_file": str(targets), "labels": ["federation", "cell"]}}
    if emit(doc, output):
        return
    for cell in cells:
        console.print(f"[bold]cell {cell['name']}[/] (fleet {cell['fleet']})")
        if "error" in cell:
            console.print(f"[red]{cell['error']}[/]")
        else:
            _print(cell)
        console.print()
    console.print(f"Prometheus, every cell: file_sd {targets} (each target labelled federation and cell; "
                  "the federation's mover keeps it current)")


def _print(doc: dict[str, Any]) -> None:
    console.print(f"Ray dashboard of fleet [bold]{doc['fleet']}[/]: {doc['url']}")
    views = Table(box=None, show_header=False, pad_edge=False)
    views.add_column(style="bold", no_wrap=True)
    views.add_column(no_wrap=True)
    views.add_column(overflow="fold")
    for name, view in doc["views"].items():
        views.add_row(name.capitalize(), view["url"], view["shows"])
    console.print(views)
    auth = doc["auth"]
    console.print()
    if auth["mode"] == "disabled":
        console.print("Sign-in: none (token authentication is off on this head).")
    else:
        accepted = "" if auth["token_accepted"] else "  [red](the dashboard refused this token)[/]"
        console.print(f"Sign-in: token authentication is on; the fleet's token is in {auth['token_file']}{accepted}")
        console.print("  browser  open the URL and paste the token when the dashboard asks for it")
        if "token" in auth:
            console.print(f"  token    {auth['token']}")
        else:
            console.print("           (`rayfleet dashboard --show-token` prints it)")
        console.print(f"  curl     {auth['curl']}")
        console.print(f"  Ray CLI  {auth['ray_cli']}")
    if "tunnel" in doc:
        console.print(f"  remote   {doc['tunnel']}   then open {doc['url']}")
    metrics = doc["metrics"]
    console.print()
    targets = ", ".join(f"{t['target']} ({'head' if t['head'] else t['pool'] or '-'})" for t in metrics["targets"])
    console.print(f"Prometheus ({metrics['prefix']}*): {targets or 'no node answers'}")
    if "service_discovery_file" in metrics:
        console.print(f"  file_sd  {metrics['service_discovery_file']}")
