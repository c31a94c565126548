"""`rayfleet explain POOL|JOB|NODE [-o json]`: why a pool is not growing, why a job is pending, why a
node was drained, quarantined or replaced. The answers come from the controller's own records
(cluster/decide/explain.py)."""
from __future__ import annotations

import time
from typing import Any, Optional

import typer

from rayfleet.cli.completion import complete_fleet
from rayfleet.cli.app import app
from rayfleet.cli.output import Format, console, emit
from rayfleet.cli.cells import federation
from rayfleet.cluster.head.federation_record import placement_of
from rayfleet.cluster.head.fleetdir import FleetDir
from rayfleet.cluster.rayio.connection import connect
from rayfleet.errors import BadInput, FleetNotRunning


@app.command()
def explain(
    subject: str = typer.Argument(..., help="a pool name, a job name or a node (instance id or its short form)"),
    output: Format = typer.Option(Format.table, "-o", "--output", help="table, json or yaml"),
    fleet_name: Optional[str] = typer.Option(None, "--fleet", help="fleet name (default: current)",
                                             autocompletion=complete_fleet),
) -> None:
    """Why a pool is not growing, why a job is pending, why a node was drained, quarantined or replaced."""
    from rayfleet.cluster.decide import explain as why
    from rayfleet.jobs.supervision import goodput
    from rayfleet.jobs.supervision import history
    from rayfleet.jobs.client.spec import JobSpec
    from rayfleet.jobs.client.submit import storage_of

    placed = None
    record = federation(fleet_name)
    if record is not None:
        placed = placed_job(record, subject)
        try:
            conn = connect(placed["cell_fleet"])
        except FleetNotRunning as error:  # the placement still says why it went there
            show({"subject": subject, "kind": "job", "placement": placed,
                  "answer": placement_lines(placed) + [str(error)]}, output)
            return
    else:
        conn = connect(fleet_name)
    status = conn.store.status()
    if status is None:
        raise FleetNotRunning(f"fleet {conn.fleet.name}: the controller has not published a status yet; "
                              "`rayfleet status` shows whether it runs")
    events = [e.to_json() for e in conn.store.events()]
    storage = storage_of(conn)
    pools = [p["name"] for p in status["pools"]]
    nodes = {n["instance"]: n for n in status["nodes"]}
    known = {e["instance"] for e in events if e.get("instance")} | set(nodes)
    instance = subject if subject in known else f"{conn.fleet.name}-{subject}"
    kinds = why.match(subject, pools, history.job_names(storage), known) or \
        (["node"] if instance in known else [])
    if not kinds:
        raise BadInput(f"explain {subject!r}: not a pool ({', '.join(pools)}), a job (`rayfleet jobs --all`) or a "
                       f"node (`rayfleet status`) of fleet {conn.fleet.name}")
    if len(kinds) > 1:
        raise BadInput(f"explain {subject!r}: names a {' and a '.join(kinds)}; rename one to tell them apart")
    kind = kinds[0]
    if kind == "pool":
        answer = why.explain_pool(subject, status, events, time.time())
    elif kind == "job":
        read = history.events(storage, subject)
        summary = history.summary(storage, subject, read)
        submitted = [e for e in read if e["event"] == "submitted" and e.get("spec")]
        spec = JobSpec.model_validate(submitted[-1]["spec"]) if submitted else None
        figures = goodput.account(read, time.time())
        steps = [e for e in read if e["event"] == "step" and e.get("submission_id") == summary.get("submission_id")]
        job = {**summary, "workers": spec.worker_range[0] if spec else None,
               "steps_done": steps[-1]["step"] if steps else None,
               "ettr": figures.ettr if figures else None}
        from rayfleet.jobs.client.spec import gpus_per_worker

        worker = {"CPU": spec.resources.cpus, "GPU": gpus_per_worker(spec, conn.store.spec())} if spec else {}
        answer = why.explain_job(subject, job, status, worker, [e for e in events if subject in e["message"]])
    else:
        health = next((n for n in (conn.store.health() or {"nodes": []})["nodes"] if n["instance"] == instance), None)
        answer = why.explain_node(instance, nodes.get(instance), health, events)
    if placed is not None:
        answer = {**answer, "placement": placed, "answer": placement_lines(placed) + list(answer["answer"])}
    show(answer, output)


def show(answer: dict[str, Any], output: Format) -> None:
    if emit(answer, output):
        return
    for line in answer["answer"]:
        console.print(line, markup=False)


def placed_job(record: Any, subject: str) -> dict[str, Any]:
    """The newest placement of job `subject` on the federation's cells; BadInput if it has none."""
    placed = placement_of(FleetDir(record.fleet), subject)
    if placed is None:
        cells = ", ".join(c.fleet for c in record.cells)
        raise BadInput(f"explain {subject!r}: not a job fleet {record.fleet} placed on one of its cells; for a "
                       f"pool or a node, name its cell's fleet with --fleet ({cells})")
    return placed


def placement_lines(placed: dict[str, Any]) -> list[str]:
    """Why the federation put the job on its cell, and why not on each other cell."""
    lines = [f"{placed['job']} was placed on cell {placed['cell']} (fleet {placed['cell_fleet']}), "
             f"submission {placed['submission_id']}:"]
    moved = placed.get("moved_from")
    if moved:
        lines = [f"{placed['job']} was moved from cell {moved['cell']} (submission {moved['submission_id']}) to "
                 f"cell {placed['cell']} (fleet {placed['cell_fleet']}), submission {placed['submission_id']}, "
                 f"resuming from its newest checkpoint, because {placed['why']}; there:"]
    lines += [f"  cell {r['cell']}: {r['verdict']}: {r['why']}" for r in placed["reasons"]]
    return lines
