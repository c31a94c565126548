"""`rayfleet events`: the controller's decisions, each with its reason."""
from __future__ import annotations

import dataclasses
import datetime
import re
from typing import Iterable, Optional

import typer
from rich.table import Table

from rayfleet.cli.completion import complete_fleet, complete_pool
from rayfleet.cli.app import app
from rayfleet.cli.cells import federation
from rayfleet.cluster.head.federation_record import FederationRecord
from rayfleet.cluster.head.fleetdir import FleetDir
from rayfleet.errors import FleetNotRunning
from rayfleet.cli.output import Format, console, emit, short_instance, table
from rayfleet.cluster.rayio.connection import connect
from rayfleet.cluster.decide.events import Event


@app.command()
def events(
    pool: Optional[str] = typer.Option(None, help="only this pool", autocompletion=complete_pool),
    kind: Optional[str] = typer.Option(None, help="only this kind (launch, replace, scale, lost, ...)"),
    limit: int = typer.Option(50, help="newest N events"),
    output: Format = typer.Option(Format.table, "-o", "--output", help="table, json or yaml"),
    fleet_name: Optional[str] = typer.Option(None, "--fleet", help="fleet name (default: current)",
                                             autocompletion=complete_fleet),
) -> None:
    """List launches, replacements, drains and scaling decisions with the reason for each. A fleet
    of cells lists the federation's placements and moves and every answering cell's events."""
    record = federation(fleet_name)
    if record is None:
        conn = connect(fleet_name)
        found, name, silent = conn.store.events(), conn.fleet.name, []
    else:
        (found, silent), name = federated_events(record), record.fleet
    matching = [event for event in found
                if (pool is None or event.pool == pool) and (kind is None or event.kind == kind)]
    chosen = matching[-limit:] if limit > 0 else []
    if emit([event.to_json() for event in chosen], output):
        return
    for cell, error in silent:
        console.print(f"cell {cell} does not answer, its own events are not shown: {error}", style="dim")
    if not chosen:
        console.print("no events yet" + (" matching the filters" if pool or kind else ""))
        return
    console.print(events_table(chosen, name))
    if len(matching) > len(chosen):  # said under the table; -o json stays a plain list
        console.print(f"the newest {len(chosen)} of {len(matching)} events; `--limit {len(matching)}` shows them all",
                      style="dim")


def federated_events(record: FederationRecord) -> tuple[list[Event], list[tuple[str, str]]]:
    """The federation's own decisions (each placement and move, from placements.jsonl) and each
    answering cell's events, its messages prefixed with the cell, oldest first; and the cells that
    do not answer, each with its error."""
    from rayfleet.cluster.decide.federation import placement_event
    from rayfleet.cluster.head.federation_record import placements

    found = [placement_event(entry) for entry in placements(FleetDir(record.fleet))]
    silent = []
    for cell in record.cells:
        try:
            cell_events = connect(cell.fleet).store.events()
        except FleetNotRunning as error:  # a lost cell: the federation's events say what became of its jobs
            silent.append((cell.name, str(error)))
            continue
        found += [dataclasses.replace(e, message=f"cell {cell.name}: {e.message}") for e in cell_events]
    return sorted(found, key=lambda event: event.time), silent


def events_table(chosen: Iterable[Event], fleet: str) -> Table:
    """TIME KIND NODE MESSAGE REASON, folded to fit 80 columns; node ids (FLEET-POOL-NNNN, see
    plan.instance_name) without the fleet's name."""
    out = table(("TIME", {"no_wrap": True}), ("KIND", {"no_wrap": True}),
                ("NODE", {"overflow": "fold", "max_width": 16}),
                ("MESSAGE", {"overflow": "fold", "ratio": 3}), ("REASON", {"overflow": "fold", "ratio": 2}))
    for event in chosen:
        when = datetime.datetime.fromtimestamp(event.time).strftime("%H:%M:%S")
        message = re.sub(rf"(?<![\w.-]){re.escape(fleet)}-(?=[\w.-]*-\d{{4,}}\b)", "", event.message)
        if event.reason and message.endswith(f": {event.reason}"):  # said once, in REASON
            message = message[: -len(event.reason) - 2]
        node = short_instance(event.instance, fleet) if event.instance else (event.pool or "-")
        out.add_row(when, event.kind, node, message, event.reason or "-")
    return out
