"""`rayfleet schema`: the JSON Schema of the fleet spec (and, with --job, of the job spec)."""
from __future__ import annotations

import json

import typer

from rayfleet.cli.app import app


@app.command()
def schema() -> None:
    """Print the fleet spec's JSON Schema (for editors and CI validation)."""
    from rayfleet.cluster.spec.fleet import fleet_json_schema

    typer.echo(json.dumps(fleet_json_schema(), indent=2))
