"""`rayfleet down`: stop everything the fleet started; nothing of ours is left running."""
from __future__ import annotations

import json
from typing import Optional

import typer

from rayfleet.cluster.rayio import gcs
from rayfleet.cli.completion import complete_fleet
from rayfleet.cli.app import app
from rayfleet.cli.mover import stop_mover
from rayfleet.cli.output import console
from rayfleet.cluster.rayio.connection import ray_driver, use_token
from rayfleet.cluster.loop.controller import stop_controller
from rayfleet.cluster.head.federation_record import forget_federation, read_federation
from rayfleet.cluster.head.fleetdir import FleetDir, current_fleet_name, resolve_fleet, set_current_fleet
from rayfleet.cluster.head.head import stop_head
from rayfleet.cluster.providers import make_provider
from rayfleet.cluster.spec.fleet import load_fleet_spec


@app.command()
def down(fleet_name: Optional[str] = typer.Option(None, "--fleet", help="fleet name (default: current)",
                                             autocompletion=complete_fleet)) -> None:
    """Stop the controller, every node, and the head. Safe to repeat."""
    fleet = resolve_fleet(fleet_name)
    record = read_federation(fleet)
    if record is None:
        down_fleet(fleet)
        return
    stop_mover(fleet)  # first: nothing moves while the cells go down
    with fleet.lock():
        for cell in record.cells:
            cell_fleet = FleetDir(cell.fleet)
            if cell_fleet.exists():
                console.print(f"[bold]cell {cell.name}[/] (fleet {cell.fleet})")
                down_fleet(cell_fleet)
        forget_federation(fleet)  # its cells are down; placements.jsonl and the shared storage stay
        if current_fleet_name() == fleet.name:
            set_current_fleet(None)
    console.print(f"fleet {fleet.name} is down: {len(record.cells)} cells")


def down_fleet(fleet: FleetDir) -> None:
    """Today's `down` of one Ray cluster: its controller, the nodes it started, then its head."""
    with fleet.lock():
        head = fleet.read_head()
        if head is not None and gcs.reachable(head["gcs_address"]):
            use_token(fleet.token_file)
            with console.status("stopping the controller"):
                try:
                    with ray_driver(head["gcs_address"]):
                        stop_controller()
                except Exception as error:  # the head may be half-dead; the processes go anyway
                    console.print(f"controller not stopped cleanly ({error}); stopping its nodes anyway")
        runtime_file = fleet.path / "runtime.json"
        if runtime_file.exists() and fleet.spec_file.exists():
            provider = make_provider(load_fleet_spec(fleet.spec_file), json.loads(runtime_file.read_text()))
            names = [instance.id for instance in provider.instances()]
            with console.status(f"stopping {len(names)} nodes"):
                provider.terminate(names, wait=True)
            console.print(f"stopped {len(names)} nodes")
        with console.status("stopping the head"):
            stop_head(fleet)
        if current_fleet_name() == fleet.name:
            set_current_fleet(None)
    console.print(f"fleet {fleet.name} is down")
