"""`rayfleet demo`: a local fleet, an MoE job with expert parallelism, live progress, then down."""
from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from rayfleet.cli.app import app
from rayfleet.cli.output import console
from rayfleet.errors import NotFound


def examples_dir() -> Path:
    """manifests/examples of the working directory, else of the checkout rayfleet runs from."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[3]):
        candidate = root / "manifests" / "examples"
        if (candidate / "local-fleet.yaml").exists():
            return candidate
    raise NotFound("demo: manifests/examples/local-fleet.yaml not found; run it from the rayfleet checkout")


@app.command()
def demo(
    keep: bool = typer.Option(False, "--keep", help="leave the fleet running afterwards"),
    fleet_file: str = typer.Option("local-fleet.yaml", help="fleet spec in manifests/examples"),
    job_file: str = typer.Option("moe-job.yaml", help="job spec in manifests/examples"),
) -> None:
    """Start the example fleet, train the example MoE job on it with live progress, stop the fleet."""
    from rayfleet.cli.commands.down import down
    from rayfleet.cli.commands.submit import follow_job
    from rayfleet.cli.commands.up import up
    from rayfleet.cluster.rayio.connection import connect
    from rayfleet.jobs.client.spec import load_job_spec
    from rayfleet.jobs.client.submit import progress, submit

    examples = examples_dir()
    fleet_path, job_path = examples / fleet_file, examples / job_file
    spec = load_job_spec(job_path)
    started = time.monotonic()
    console.rule("[bold]1. a local GPU fleet from YAML")
    up(file=fleet_path, wait=True, timeout=600.0)
    try:
        conn = connect(None)
        console.rule("[bold]2. an MoE job with expert parallelism")
        console.print(f"{spec.name}: {spec.model.preset} ({spec.model.overrides or 'no overrides'}), "
                      f"{spec.workers} workers, experts sharded {spec.parallelism.expert_parallel}-way, "
                      f"{spec.steps} steps on pool {spec.pool}")
        console.print("In the Ray dashboard meanwhile:\n"
                      f"  Jobs    {conn.dashboard_url}/#/jobs     (the job, with its pool and strategy)\n"
                      f"  Actors  {conn.dashboard_url}/#/actors   (rayfleet-controller, the Train workers)\n"
                      f"  Cluster {conn.dashboard_url}/#/cluster  (the nodes, labelled by pool)\n"
                      "  (`rayfleet dashboard` tells how to sign in with the fleet's token)")
        submission = submit(conn, spec, job_path)
        follow_job(conn, spec.name, submission)
        final = progress(conn, spec.name) or {}
        console.rule("[bold]3. summary")
        console.print(json.dumps({"job": spec.name, "submission": submission, "steps": final.get("step"),
                                  "final_loss": round(final.get("loss") or 0.0, 4),
                                  "tokens_per_s": round(final.get("tokens_per_s") or 0.0),
                                  "restarts": final.get("restarts"),
                                  "wall_s": round(time.monotonic() - started, 1)}, indent=1))
    finally:
        if not keep:
            console.rule("[bold]4. down")
            down(fleet_name=None)
