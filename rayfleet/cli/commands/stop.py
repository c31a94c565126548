"""`rayfleet stop ID`: stop a job (its checkpoints stay: submitting the name again continues it)."""
from __future__ import annotations

from typing import Optional

import typer

from rayfleet.cli.completion import complete_fleet, complete_job
from rayfleet.cli.app import app
from rayfleet.cli.output import console
from rayfleet.cli.cells import job_fleet
from rayfleet.cluster.rayio.connection import connect


@app.command()
def stop(
    ident: str = typer.Argument(..., help="job name (its newest submission) or submission id",
                               autocompletion=complete_job),
    fleet_name: Optional[str] = typer.Option(None, "--fleet", help="fleet name (default: current)",
                                             autocompletion=complete_fleet),
) -> None:
    """Stop a running job."""
    from rayfleet.jobs.client.submit import stop as stop_job

    job = stop_job(connect(job_fleet(fleet_name, ident)), ident)
    if job.get("ended"):
        console.print(f"{job['job']} ({job['submission_id']}) had already ended: {job['status']}; nothing stopped")
        return
    console.print(f"stopped {job['job']} ({job['submission_id']}); submit it again to continue from its "
                  "newest checkpoint")
