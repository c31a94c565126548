"""Training jobs on a test fleet, as a user runs and reads them: a job file, `rayfleet submit`,
`rayfleet jobs` and `rayfleet job`, and what a job leaves in the fleet's storage (its history
and the loss curve of each run)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psutil
import yaml

from rayfleet.jobs.supervision import history as job_history
from tests.conftest import processes_of, wait_until
from tests.support.fleet import Fleet
from tests.support.specs import h100_pool, job_spec

ENDED = ("SUCCEEDED", "FAILED", "STOPPED")
"""The states a job does not leave by itself."""


JOBS_POOLS = [h100_pool(cpus_per_node=2, memory="8Gi", min_nodes=1, max_nodes=5, nodes=4)]
"""The fleet of the job modules (test_jobs_on_fleet, test_resume_on_fleet, test_s3_jobs_on_fleet):
4 nodes of 2 CPUs, one pool that may grow to 5."""
SMALL = {"workers": 1, "resources": {"cpus": 1}, "data": {"seq_len": 64, "global_batch": 4},
         "optimizer": {"warmup_steps": 2}, "steps": 6, "checkpoint": {"every": 6}}


def small_job(name: str, **changes: Any) -> dict[str, Any]:
    """A six-step job of one worker; `changes` replace its parts."""
    return job_spec(name, **{**SMALL, **changes})


def job_file(fleet: Fleet, spec: dict[str, Any]) -> Path:
    """`spec` written as <name>.yaml beside the fleet's home, for `rayfleet submit -f`."""
    path = fleet.home.parent / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def submit(fleet: Fleet, spec: dict[str, Any], timeout: float = 600) -> str:
    """Submit `spec` through the CLI; its submission id."""
    result = fleet.cli("submit", "-f", str(job_file(fleet, spec)), timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.split(" as ")[1].split()[0]  # "submitted NAME as SUBMISSION"


def jobs(fleet: Fleet, every: bool = False) -> dict[str, dict[str, Any]]:
    """`rayfleet jobs` (with --all if `every`): job name -> its row."""
    result = fleet.cli("jobs", *(["--all"] if every else []), "-o", "json", timeout=60)
    assert result.returncode == 0, result.stderr
    return {row["job"]: row for row in json.loads(result.stdout)}


def wait_for_job(fleet: Fleet, name: str, states: tuple[str, ...], timeout: float = 300,
                 every: bool = False) -> dict[str, Any]:
    """Poll `rayfleet jobs` until job `name` is in one of `states`; its row then."""
    return wait_until(lambda: (row := jobs(fleet, every).get(name)) and row["status"] in states and row,
                      timeout, f"job {name} in {states}")


def job_detail(fleet: Fleet, name: str) -> dict[str, Any]:
    """`rayfleet job NAME`: state, standbys, final step and goodput."""
    result = fleet.cli("job", name, "-o", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def history(fleet: Fleet, name: str) -> list[dict[str, Any]]:
    """Every event of the job's history file, in order ([] before it has one)."""
    path = fleet.job_dir(name) / job_history.FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def started_events(fleet: Fleet, name: str) -> list[dict[str, Any]]:
    """One `started` event per attempt of the job, with the step it resumed from."""
    return [e for e in history(fleet, name) if e["event"] == "started"]


def run_curve(fleet: Fleet, name: str, submission: str) -> list[dict[str, Any]]:
    """The metrics of one submission of the job, one point per step as written."""
    from rayfleet.jobs.worker.loop import METRICS  # the worker loop imports torch: only when asked

    path = fleet.job_dir(name) / "runs" / submission / METRICS
    return [json.loads(line) for line in path.read_text().splitlines()]


def job_curve(fleet: Fleet, name: str) -> list[dict[str, Any]]:
    """The metrics of every submission of the job, in time order."""
    from rayfleet.jobs.worker.loop import METRICS

    points = []
    for path in fleet.job_dir(name).glob(f"runs/*/{METRICS}"):
        points += [json.loads(line) for line in path.read_text().splitlines()]
    return sorted(points, key=lambda p: p["time"])


def train_workers(fleet: Fleet) -> list[psutil.Process]:
    """The fleet's Ray Train worker processes."""
    return processes_of(fleet.home, "RayTrainWorker")
