"""`rayfleet submit -f JOB.yaml [--follow]`: check a job against the fleet and submit it."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from rayfleet.cli.completion import complete_fleet
from rayfleet.cli.app import app
from rayfleet.cli.output import console
from rayfleet.cli.cells import federation, place_job
from rayfleet.cluster.head.federation_record import FederationRecord, placing, record_placement
from rayfleet.cluster.head.fleetdir import FleetDir
from rayfleet.cluster.rayio.connection import Connection, connect
from rayfleet.errors import Failed


@app.command()
def submit(
    file: Path = typer.Option(..., "-f", "--file", help="job spec (YAML)"),
    follow: bool = typer.Option(False, "--follow", help="show live progress until the job ends"),
    fleet_name: Optional[str] = typer.Option(None, "--fleet", help="fleet name (default: current)",
                                             autocompletion=complete_fleet),
) -> None:
    """Submit a training job. A name that has checkpoints continues from the newest one."""
    from rayfleet.jobs.client.spec import load_job_spec, validate_data, validate_model
    from rayfleet.jobs.client.submit import submit as submit_job

    spec = load_job_spec(file)
    # the model and the corpus need no fleet: a bad one is refused before anything is contacted
    validate_data(spec, file, validate_model(spec, file).vocab_size)
    record = federation(fleet_name)
    if record is None:
        conn = connect(fleet_name)
        submission_id = submit_job(conn, spec, file)
    else:
        conn, submission_id = submit_to_cell(record, spec, file)
    console.print(f"submitted {spec.name} as {submission_id} to pool {spec.pool} "
                  f"({spec.parallelism.strategy}); dashboard: {conn.dashboard_url}/#/jobs")
    if follow:
        follow_job(conn, spec.name, submission_id)


def submit_to_cell(record: FederationRecord, spec: Any, file: Path) -> tuple[Connection, str]:
    """Place the job on one cell, submit it there through today's path, and record the placement
    and its reasons in the federation's folder (`rayfleet explain JOB` reads them)."""
    from rayfleet.cluster.decide.federation import placement_json
    from rayfleet.jobs.client.submit import submit as submit_job

    federation_dir = FleetDir(record.fleet)
    with placing(federation_dir):  # no other submit, nor the mover, counts the same free nodes meanwhile
        placement = place_job(record, spec)
        reasons = "; ".join(f"{r.cell}: {r.verdict.value}, {r.why}" for r in placement.reasons)
        if placement.cell is None:
            raise Failed(f"job {spec.name}: no cell of fleet {record.fleet} can run it now ({reasons})")
        cell = record.cell(placement.cell)
        assert cell is not None
        conn = connect(cell.fleet)
        submission_id = submit_job(conn, spec, file)
        entry = {**placement_json(placement), "cell_fleet": cell.fleet, "pool": spec.pool,
                 "submission_id": submission_id, "at": time.time()}
        record_placement(federation_dir, entry)
    console.print(f"placed {spec.name} on cell {cell.name} (fleet {cell.fleet}): {placement.reasons[0].why}")
    return conn, submission_id


def follow_job(conn: Connection, name: str, submission_id: str) -> dict[str, Any]:
    """Live progress (step, loss, tokens/s) until the submission ends; Failed if it did not succeed."""
    from rayfleet.jobs.client.submit import TERMINAL, job_client, progress, resolve_submission, storage_of
    from rayfleet.jobs.supervision import history

    client = job_client(conn)
    storage = storage_of(conn)
    tail = history.Tail(history.job_dir(storage, name) / history.FILE)  # read incrementally
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task(name, total=None, detail="waiting for workers")
        while True:
            # settled from this job's history, read incrementally (only its row is looked at)
            job = resolve_submission(client, storage, submission_id,
                                     lambda job_name: tail.read() if job_name == name else [])
            state = progress(conn, name)
            if state and state.get("submission_id") == submission_id:
                detail = f"loss {state['loss']:.4f}  {state['tokens_per_s']:,.0f} tok/s"
                if state.get("mfu") is not None:
                    detail += f"  MFU {state['mfu']:.1%}"
                if state.get("val_loss") is not None:
                    detail += f"  val {state['val_loss']:.4f}"
                if state.get("restarts"):
                    detail += f"  restarts {state['restarts']}"
                bar.update(task, total=state["steps"], completed=state["step"], detail=detail)
            if job["status"] in TERMINAL:
                break
            time.sleep(0.5)
    if job["status"] != "SUCCEEDED":
        raise Failed(f"job {name} ({submission_id}) ended {job['status']}: {job.get('message') or ''}; "
                     f"`rayfleet logs {submission_id}` shows why")
    console.print(f"job {name} succeeded")
    return job
