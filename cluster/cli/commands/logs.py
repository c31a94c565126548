"""`rayfleet logs ID [--follow]`: a job's driver and worker output."""
from __future__ import annotations

import asyncio
import sys
from typing import Optional

import typer

from cluster.cli.main import app
from cluster.connection import connect


@app.command()
def logs(
    ident: str = typer.Argument(..., help="job name (its newest submission) or submission id"),
    follow: bool = typer.Option(False, "--follow", "-f", help="keep printing until the job ends"),
    fleet_name: Optional[str] = typer.Option(None, "--fleet", help="fleet name (default: current)"),
) -> None:
    """Print a job's logs."""
    from jobs.submit import job_client, resolve_submission

    client = job_client(connect(fleet_name))
    job = resolve_submission(client, ident)
    if not follow:
        sys.stdout.write(client.get_job_logs(job["submission_id"]))
        return

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job["submission_id"]):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    asyncio.run(tail())
