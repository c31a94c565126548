"""`rayfleet logs ID [--follow] [-o json|yaml]`: a job's driver and worker output."""
from __future__ import annotations

import asyncio
import sys
from typing import Optional

import typer

from rayfleet.cli.completion import complete_fleet, complete_job
from rayfleet.cli.app import app
from rayfleet.cli.output import Format, emit
from rayfleet.cli.cells import job_fleet
from rayfleet.cluster.rayio.connection import connect
from rayfleet.errors import BadInput


@app.command()
def logs(
    ident: str = typer.Argument(..., help="job name (its newest submission) or submission id",
                                autocompletion=complete_job),
    follow: bool = typer.Option(False, "--follow", "-f", help="keep printing until the job ends"),
    output: Format = typer.Option(Format.table, "-o", "--output",
                                  help="table (the plain log), or json / yaml: the job, its state and its log"),
    fleet_name: Optional[str] = typer.Option(None, "--fleet", help="fleet name (default: current)",
                                             autocompletion=complete_fleet),
) -> None:
    """Print a job's logs."""
    from rayfleet.jobs.client.submit import job_client, resolve_submission, storage_of

    if follow and output is not Format.table:
        raise BadInput(f"logs --follow -o {output.value}: a followed log is printed as it comes; "
                       f"drop --follow to get the whole log as {output.value}")
    conn = connect(job_fleet(fleet_name, ident))
    client = job_client(conn)
    job = resolve_submission(client, storage_of(conn), ident)
    if not follow:
        text = client.get_job_logs(job["submission_id"])
        if not emit({"job": job["job"], "submission_id": job["submission_id"], "status": job["status"],
                     "logs": text}, output):
            sys.stdout.write(text)
        return

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job["submission_id"]):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    asyncio.run(tail())
