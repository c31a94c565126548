"""`rayfleet job NAME [-o json]`: one job's run, where its wall time went (goodput) and its faults."""
from __future__ import annotations

import time
from typing import Any, Optional

import typer

from rayfleet.cli.completion import complete_fleet, complete_job
from rayfleet.cli.app import app
from rayfleet.cli.output import Format, age, console, emit, table
from rayfleet.cli.cells import job_fleet
from rayfleet.cluster.rayio.connection import connect
from rayfleet.errors import BadInput

PART_HELP = {
    "waiting": "queued until its workers were placed and running",
    "startup": "workers up -> first step; the end's teardown",
    "compile": "the first step of an attempt, which compiled the model",
    "training": "steps whose result was kept",
    "rollback": "steps done again after a failure",
    "checkpoint": "saving checkpoints",
    "detection": "a failure -> noticed",
    "recovery": "noticed -> training again",
}


@app.command()
def job(
    name: str = typer.Argument(..., help="job name", autocompletion=complete_job),
    output: Format = typer.Option(Format.table, "-o", "--output", help="table, json or yaml"),
    fleet_name: Optional[str] = typer.Option(None, "--fleet", help="fleet name (default: current)",
                                             autocompletion=complete_fleet),
) -> None:
    """A job's latest run: state, attempts, ETTR and its wall time split into parts, each fault."""
    from rayfleet.jobs.supervision import goodput
    from rayfleet.jobs.supervision import history
    from rayfleet.jobs.client.submit import storage_of

    conn = connect(job_fleet(fleet_name, name))
    storage = storage_of(conn)
    read = history.events(storage, name)
    if not read:
        known = ", ".join(history.job_names(storage)) or "none yet"
        raise BadInput(f"job {name!r}: no such job in fleet {conn.fleet.name}'s history ({storage}); "
                       f"jobs: {known}. `rayfleet jobs --all` lists them")
    now = time.time()
    summary = history.summary(storage, name, read)
    figures = goodput.account(read, now)
    standbys = _standbys(conn, name, summary, now)
    validation = _validation(conn, name, summary)
    doc: dict[str, Any] = {**summary, "standbys": standbys, "goodput": figures.to_json() if figures else None,
                           "validation": validation}
    if emit(doc, output):
        return
    head = (f"[bold]{name}[/] {summary.get('state', '-')}  step {summary.get('final_step') or '-'}/"
            f"{summary.get('steps') or '-'}  pool {summary.get('pool') or '-'}  {summary.get('strategy') or '-'}  "
            f"restarts {summary.get('restarts', 0)}  submitted {age(now - summary['submitted_at'])} ago"
            + (f"  warm standbys {standbys}" if summary.get("state") == "RUNNING" else ""))
    console.print(head)
    if validation is not None:
        console.print(f"validation loss {validation['loss']:.4f}  perplexity {validation['perplexity']:.2f}  "
                      f"(step {validation['step']})")
    if figures is None:
        return
    ettr = f"{figures.ettr:.1%}" if figures.ettr is not None else "-"
    console.print(f"ETTR {ettr}: {figures.parts['training']:.1f}s of kept training in {figures.wall_s:.1f}s; "
                  f"{figures.attempts} attempt(s), {figures.steps_redone} step(s) redone")
    parts = table("PART", ("SECONDS", {"justify": "right"}), ("SHARE", {"justify": "right"}), "WHAT")
    for part, seconds in figures.parts.items():
        share = seconds / figures.wall_s if figures.wall_s else 0.0
        parts.add_row(part, f"{seconds:.1f}", f"{share:.1%}", PART_HELP[part])
    console.print(parts)
    if figures.faults:
        faults = table(("AFTER", {"justify": "right"}), ("RESUMED", {"justify": "right"}),
                       ("REDONE", {"justify": "right"}), ("DETECT", {"justify": "right"}),
                       ("STEP AFTER", {"justify": "right"}), ("CAUSE", {"overflow": "fold"}))
        for fault in figures.faults:
            faults.add_row(str(fault["after_step"]), str(fault["resumed_from"]), str(fault["steps_redone"]),
                           f"{fault['detection_s']:.1f}s", f"{fault['first_step_after_s']:.1f}s", fault["reason"])
        console.print(faults)


def _standbys(conn: Any, name: str, summary: dict[str, Any], now: float) -> int:
    """The running submission's warm standby processes waiting now (jobs/driver/warm.py); 0 otherwise."""
    from rayfleet.jobs.driver import warm

    if summary.get("state") != "RUNNING":
        return 0
    return sum(len(keys) for keys in warm.live_standbys(conn.client, name, summary["submission_id"], now).values())


def _validation(conn: Any, name: str, summary: dict[str, Any]) -> dict[str, Any] | None:
    """The newest validation figures its latest submission published (jobs/worker/progress.py)."""
    from rayfleet.jobs.client.submit import progress

    live = progress(conn, name) or {}
    if live.get("val_loss") is None or live.get("submission_id") != summary.get("submission_id"):
        return None
    return {"loss": live["val_loss"], "perplexity": live["val_perplexity"], "step": live["val_step"]}
