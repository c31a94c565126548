"""`rayfleet export JOB [--step N] -o DIR`: a job's trained model as safetensors plus its config."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from rayfleet.cli.app import app
from rayfleet.cli.completion import complete_fleet, complete_job
from rayfleet.cli.output import console


@app.command()
def export(
    name: str = typer.Argument(..., help="job name", autocompletion=complete_job),
    out: Path = typer.Option(..., "-o", "--out", help="folder to write model.safetensors, config.json, rayfleet.json"),
    step: Optional[int] = typer.Option(None, "--step", help="the checkpoint of this step (default: the newest)"),
    storage: Optional[str] = typer.Option(None, "--storage", help="the fleet's storage path (default: the running "
                                                                  "fleet's, else the fleet folder's own)"),
    fleet_name: Optional[str] = typer.Option(None, "--fleet", help="fleet name (default: current)",
                                             autocompletion=complete_fleet),
) -> None:
    """Write a job's model, from its newest (or --step) committed checkpoint, as safetensors plus its
    config: it loads into rayfleet.model.Transformer without the training code. Works with the fleet
    down (its folder's storage) or with --storage. OUT/rayfleet.json says what was exported."""
    from rayfleet.jobs.worker.export import export as write

    done = write(storage or _storage(fleet_name), name, out, step)
    console.print(f"exported {name} step {done['step']} ({done['parameters']:,} parameters, {done['dtype']}) "
                  f"to {out}: model.safetensors, config.json, rayfleet.json")


def _storage(fleet_name: str | None) -> str:
    """The running fleet's storage; with the fleet down, its folder's own."""
    from rayfleet.cluster.head.fleetdir import resolve_fleet
    from rayfleet.cluster.rayio.connection import connect
    from rayfleet.errors import FleetNotRunning
    from rayfleet.jobs.client.submit import storage_of

    try:
        return storage_of(connect(fleet_name))
    except FleetNotRunning:
        return str(resolve_fleet(fleet_name).storage_dir)
