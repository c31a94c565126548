"""`rayfleet demo`: a local fleet, an MoE job with expert parallelism, live progress, then down."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer

from rayfleet.cli.app import app
from rayfleet.cli.output import console
from rayfleet.errors import NotFound


def examples_dir() -> Path:
    """manifests/examples of the working directory (a checkout, perhaps edited), else the copy
    installed with rayfleet (the package `rayfleet.examples`)."""
    import importlib.resources

    candidates = [Path.cwd() / "manifests" / "examples"]
    try:
        candidates.append(Path(str(importlib.resources.files("rayfleet.examples"))))
    except ModuleNotFoundError:
        pass
    for candidate in candidates:
        if (candidate / "local-fleet.yaml").exists():
            return candidate
    raise NotFound("demo: manifests/examples/local-fleet.yaml not found, neither here nor installed with rayfleet; "
                   "reinstall rayfleet or run it from the rayfleet checkout")


@app.command()
def demo(
    keep: bool = typer.Option(False, "--keep", help="leave the fleet running afterwards"),
    fleet_file: str = typer.Option("local-fleet.yaml", help="fleet spec in manifests/examples"),
    job_file: str = typer.Option("moe-job.yaml", help="job spec in manifests/examples"),
    own_data: bool = typer.Option(False, "--own-data", help="first prepare a corpus from Python's own sources "
                                                            "with a trained tokenizer, then train own-data-job.yaml "
                                                            "on it with validation loss"),
) -> None:
    """Start the example fleet, train the example MoE job on it with live progress, stop the fleet."""
    from rayfleet.cli.commands.down import down
    from rayfleet.cli.commands.submit import follow_job
    from rayfleet.cli.commands.up import up
    from rayfleet.cluster.rayio.connection import connect
    from rayfleet.jobs.client.spec import load_job_spec
    from rayfleet.jobs.client.submit import progress, submit

    examples = examples_dir()
    started = time.monotonic()
    if own_data:
        job_file = "own-data-job.yaml" if job_file == "moe-job.yaml" else job_file
    fleet_path, job_path = examples / fleet_file, examples / job_file
    spec = load_job_spec(job_path)
    if own_data:
        spec, job_path = _prepare_own_data(spec, job_path)
    console.rule("[bold]1. a local GPU fleet from YAML")
    up(file=fleet_path, wait=True, timeout=600.0)
    try:
        conn = connect(None)
        console.rule("[bold]2. " + ("a job on the prepared corpus" if own_data else "an MoE job with expert parallelism"))
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
                                  **({"val_loss": round(final["val_loss"], 4),
                                      "val_perplexity": round(final["val_perplexity"], 2)}
                                     if final.get("val_loss") is not None else {}),
                                  "wall_s": round(time.monotonic() - started, 1)}, indent=1))
    finally:
        if not keep:
            console.rule("[bold]4. down")
            down(fleet_name=None)


def _prepare_own_data(spec: Any, job_path: Path) -> tuple[Any, Path]:
    """Prepare Python's standard library sources (shipped with every CPython: no download) into
    token shards with a byte-level BPE trained on them, under RAYFLEET_HOME/demo-data; the job spec
    pointed at them, written beside them (what `submit` names in its messages)."""
    import glob
    import sysconfig

    import yaml

    from rayfleet.cli.commands.data import prepare
    from rayfleet.cluster.head.fleetdir import rayfleet_home

    out = rayfleet_home() / "demo-data"
    sources = sorted(glob.glob(str(Path(sysconfig.get_paths()["stdlib"]) / "*.py")))
    vocab = int(spec.model.overrides.get("vocab_size", 4096))
    console.rule("[bold]0. your own data: text -> tokenizer -> token shards")
    console.print(f"{len(sources)} Python source files of {sysconfig.get_paths()['stdlib']} -> {out} "
                  f"(a byte-level BPE of {vocab} tokens trained on them; run again: finished shards are kept)")
    prepare(inputs=sources, out=out, train_tokenizer=vocab, tokenizer=None, workers=None, chunk_mb=64)
    data = spec.data.model_copy(update={"tokens": str(out)})
    spec = spec.model_copy(update={"data": data})
    written = out.parent / job_path.name
    written.write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    return spec, written
