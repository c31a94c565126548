"""`rayfleet schema`: the JSON Schema of the fleet spec (and, with --job, of the job spec)."""
from __future__ import annotations

import json

import typer

from rayfleet.cli.app import app


@app.command()
def schema(job: bool = typer.Option(False, "--job", help="the job spec's schema instead of the fleet spec's")) -> None:
    """Print the fleet spec's JSON Schema, or the job spec's with --job (for editors and CI validation)."""
    if job:
        from rayfleet.jobs.client.spec import job_json_schema

        typer.echo(json.dumps(job_json_schema(), indent=2))
        return
    from rayfleet.cluster.spec.fleet import fleet_json_schema

    typer.echo(json.dumps(fleet_json_schema(), indent=2))
