"""`rayfleet jobs [-o json] [--all]`: training jobs with their progress."""
from __future__ import annotations

import time
from typing import Any, Optional

import typer
from rich.table import Table

from cluster.cli.main import app
from cluster.cli.output import Format, console, emit
from cluster.connection import connect


@app.command()
def jobs(
    all_jobs: bool = typer.Option(False, "--all", help="every job in the fleet's history, not only this head's"),
    output: Format = typer.Option(Format.table, "-o", "--output", help="table, json or yaml"),
    fleet_name: Optional[str] = typer.Option(None, "--fleet", help="fleet name (default: current)"),
) -> None:
    """List jobs: state, step, loss, tokens/s, restarts."""
    from jobs import history
    from jobs.submit import job_client, progress, rayfleet_jobs, storage_of

    conn = connect(fleet_name)
    storage = storage_of(conn)
    rows: list[dict[str, Any]] = []
    seen = set()
    for job in rayfleet_jobs(job_client(conn)):
        if job["job"] in seen:
            continue  # the newest submission of each name
        seen.add(job["job"])
        rows.append(_row(job, progress(conn, job["job"]), history.summary(storage, job["job"])))
    if all_jobs:
        for name in history.job_names(storage):
            if name not in seen:
                summary = history.summary(storage, name)
                rows.append(_row({"job": name, "submission_id": summary.get("submission_id"),
                                  "status": summary.get("state"), "pool": summary.get("pool"),
                                  "strategy": summary.get("strategy"), "steps": summary.get("steps"),
                                  "start_time": summary.get("submitted_at")}, None, summary))
    if emit(rows, output):
        return
    table = Table(box=None, header_style="bold")
    for column in ("JOB", "SUBMISSION", "STATE", "STEP", "LOSS", "TOK/S", "RESTARTS", "POOL", "STRATEGY", "AGE"):
        table.add_column(column)
    for row in rows:
        age = f"{time.time() - row['start_time']:.0f}s" if row.get("start_time") else "-"
        table.add_row(row["job"], row["submission_id"] or "-", row["status"] or "-",
                      f"{row['step']}/{row['steps']}" if row["step"] is not None else f"-/{row['steps']}",
                      f"{row['loss']:.4f}" if row["loss"] is not None else "-",
                      f"{row['tokens_per_s']:,.0f}" if row["tokens_per_s"] else "-", str(row["restarts"]),
                      row["pool"] or "-", row["strategy"] or "-", age)
    console.print(table)


def _row(job: dict[str, Any], live: dict[str, Any] | None, summary: dict[str, Any]) -> dict[str, Any]:
    live = live if live and live.get("submission_id") == job["submission_id"] else None
    return {**job, "step": (live or {}).get("step", summary.get("final_step")),
            "loss": (live or {}).get("loss", summary.get("loss")),
            "tokens_per_s": (live or {}).get("tokens_per_s"), "mfu": (live or {}).get("mfu"),
            "restarts": summary.get("restarts", 0) if summary.get("submission_id") == job["submission_id"] else 0}
