"""`rayfleet jobs [-o json] [--all]`: training jobs with their progress."""
from __future__ import annotations

import time
from typing import Any, Optional

import typer
from rich.table import Table

from rayfleet.cli.completion import complete_fleet
from rayfleet.cli.app import app
from rayfleet.cli.output import Format, age, console, count, emit, table
from rayfleet.cluster.rayio.connection import connect


@app.command()
def jobs(
    all_jobs: bool = typer.Option(False, "--all", help="every job in the fleet's history, not only this head's"),
    output: Format = typer.Option(Format.table, "-o", "--output", help="table, json or yaml"),
    fleet_name: Optional[str] = typer.Option(None, "--fleet", help="fleet name (default: current)",
                                             autocompletion=complete_fleet),
) -> None:
    """List jobs: state, step, loss, tokens/s, MFU, validation loss, ETTR, restarts (submission ids with -o json).
    A fleet of cells lists each cell's jobs (`-o json`: `cells`, each with its `jobs`)."""
    from rayfleet.cluster.head.federation_record import read_federation
    from rayfleet.cluster.head.fleetdir import resolve_fleet

    record = read_federation(resolve_fleet(fleet_name))
    if record is not None:
        federated_jobs(record, all_jobs, output)
        return
    rows = job_rows(connect(fleet_name), all_jobs)
    if emit(rows, output):
        return
    if not rows:
        console.print("no jobs yet: `rayfleet submit -f JOB.yaml` starts one")
        return
    console.print(jobs_table(rows, time.time()))


def job_rows(conn: Any, all_jobs: bool) -> list[dict[str, Any]]:
    """One row per job of one Ray cluster (its newest submission), with its history's figures."""
    from rayfleet.jobs.supervision import goodput
    from rayfleet.jobs.supervision import history
    from rayfleet.jobs.client.submit import job_client, progress, rayfleet_jobs, storage_of

    storage = storage_of(conn)
    histories: dict[str, list[dict[str, Any]]] = {}

    def events_of(name: str) -> list[dict[str, Any]]:  # each job's history read once
        if name not in histories:
            histories[name] = history.events(storage, name)
        return histories[name]

    rows: list[dict[str, Any]] = []
    seen = set()
    for job in rayfleet_jobs(job_client(conn), storage, events_of):
        if job["job"] in seen:
            continue  # the newest submission of each name
        seen.add(job["job"])
        read = events_of(job["job"])
        rows.append(_row(job, progress(conn, job["job"]), history.summary(storage, job["job"], read),
                         goodput.account(read, time.time())))
    if all_jobs:
        for name in history.job_names(storage):
            if name not in seen:
                read = history.events(storage, name)
                summary = history.summary(storage, name, read)
                rows.append(_row({"job": name, "submission_id": summary.get("submission_id"),
                                  "status": summary.get("state"), "pool": summary.get("pool"),
                                  "strategy": summary.get("strategy"), "steps": summary.get("steps"),
                                  "start_time": summary.get("submitted_at")}, None, summary,
                                 goodput.account(read, time.time())))
    return rows


def federated_jobs(record: Any, all_jobs: bool, output: Format) -> None:
    """Each cell's jobs; a cell whose head does not answer shows its error instead."""
    from rayfleet.errors import FleetNotRunning

    cells: list[dict[str, Any]] = []
    for cell in record.cells:
        try:
            cells.append({"name": cell.name, "fleet": cell.fleet, "jobs": job_rows(connect(cell.fleet), all_jobs)})
        except FleetNotRunning as error:
            cells.append({"name": cell.name, "fleet": cell.fleet, "jobs": [], "error": str(error)})
    if all("error" in cell for cell in cells):
        raise FleetNotRunning(f"fleet {record.fleet}: no cell answers ({'; '.join(c['error'] for c in cells)})")
    if emit({"fleet": record.fleet, "cells": cells}, output):
        return
    for doc in cells:
        console.print(f"[bold]cell {doc['name']}[/] (fleet {doc['fleet']})")
        if "error" in doc:
            console.print(f"[red]{doc['error']}[/]")
        elif doc["jobs"]:
            console.print(jobs_table(doc["jobs"], time.time()))
        else:
            console.print("no jobs")


def jobs_table(rows: list[dict[str, Any]], now: float) -> Table:
    """One row per job name (its newest submission, which `logs NAME` and `stop NAME` address);
    submission ids are in -o json. Fits 80 columns: only JOB folds, and MFU shows only where a
    job reports one (GPU jobs with a known peak)."""
    fixed = {"no_wrap": True}
    right = {"no_wrap": True, "justify": "right"}
    with_mfu = any(row.get("mfu") is not None for row in rows)
    with_val = any(row.get("val_loss") is not None for row in rows)
    columns = [("JOB", {"overflow": "fold", "min_width": 8}), ("STATE", fixed), ("STEP", right), ("LOSS", right),
               ("TOK/S", right), *([("MFU", right)] if with_mfu else []),
               *([("VAL", right)] if with_val else []), ("ETTR", right), ("RESTARTS", right),
               ("POOL", fixed),
               ("STRATEGY", fixed), ("AGE", right)]
    out = table(*columns)
    for row in rows:
        step = f"{row['step'] if row['step'] is not None else '-'}/{row['steps'] or '-'}"
        mfu = [f"{row['mfu']:.1%}" if row.get("mfu") is not None else "-"] if with_mfu else []
        val = [f"{row['val_loss']:.4f}" if row.get("val_loss") is not None else "-"] if with_val else []
        out.add_row(row["job"], row["status"] or "-", step,
                    f"{row['loss']:.4f}" if row["loss"] is not None else "-",
                    count(row["tokens_per_s"]) if row["tokens_per_s"] else "-", *mfu, *val,
                    f"{row['ettr']:.0%}" if row.get("ettr") is not None else "-", str(row["restarts"]),
                    row["pool"] or "-", row["strategy"] or "-",
                    age(now - row["start_time"]) if row.get("start_time") else "-")
    return out


def _row(job: dict[str, Any], live: dict[str, Any] | None, summary: dict[str, Any], figures: Any) -> dict[str, Any]:
    live = live if live and live.get("submission_id") == job["submission_id"] else None
    return {**job, "step": (live or {}).get("step", summary.get("final_step")),
            "ettr": figures.ettr if figures is not None else None,
            "goodput": figures.to_json() if figures is not None else None,
            "loss": (live or {}).get("loss", summary.get("loss")),
            "tokens_per_s": (live or {}).get("tokens_per_s"), "mfu": (live or {}).get("mfu"),
            "val_loss": (live or {}).get("val_loss"), "val_perplexity": (live or {}).get("val_perplexity"),
            "restarts": summary.get("restarts", 0) if summary.get("submission_id") == job["submission_id"] else 0}
