"""Jobs whose driver died are submitted again, and continue from their newest checkpoint.

A driver can die without the training failing: its node is lost, or the head went down without
fault tolerance (the driver ran there). Then Ray reports the job FAILED or STOPPED, or, on a new
cluster, does not know it at all, and nothing records why. The job's own history tells the two
apart: a training that failed for good, or a user's stop, leaves a `finished` record (written by
the entrypoint or `rayfleet stop`); a lost driver leaves none. The controller runs `orphans` every
few seconds and resubmits each orphan, up to the job's `failure.max_restarts`.

Cells of one federation share their storage, so a controller sees the histories of jobs that run
on other cells: a submission records the fleet that runs it (`fleet`), and a controller resubmits
only its own fleet's jobs. When the federation moves a job to another cell, the new submission
names that cell, so the old cell's controller, should it come back, never starts the job again.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Mapping

from rayfleet.jobs.client.spec import JobSpec
from rayfleet.jobs.client.submit import job_metadata, submit_driver
from rayfleet.jobs.contract import RunInfo, new_submission_id, submission_of_driver_actor
from rayfleet.jobs.supervision import history
from rayfleet.names import CONTROLLER_NAME

log = logging.getLogger("rayfleet.jobs")
RUNNING = ("PENDING", "RUNNING")


@dataclass(frozen=True)
class Orphan:
    job: str
    submission_id: str
    ray_status: str | None      # None: Ray does not know the submission (a new cluster)
    resubmissions: int          # times this job was already resubmitted after a lost driver


def orphans(storage: str, ray_jobs: Mapping[str, str], dead_drivers: frozenset[str] = frozenset(),
            fleet: str | None = None) -> list[Orphan]:
    """Jobs whose newest submission has no `finished` record but is not running in Ray.

    `ray_jobs` maps submission id -> Ray's status for the jobs Ray knows. `dead_drivers` are
    submissions whose JobSupervisor actor (the driver's parent) the GCS reports dead: Ray's job
    table keeps saying RUNNING for minutes after a driver's node is lost, so its word alone is
    not trusted for those. `fleet`: the caller's fleet; a job whose newest submission names
    another fleet is that fleet's (a submission that names none, from before, is anyone's).
    """
    found = []
    for name in history.job_names(storage):
        events = history.events(storage, name)
        submitted = [e for e in events if e["event"] == "submitted"]
        if not submitted:
            continue
        latest = submitted[-1]["submission_id"]
        owner = submitted[-1].get("fleet")
        if fleet is not None and owner is not None and owner != fleet:
            continue
        if any(e["event"] == "finished" and e.get("submission_id") == latest for e in events):
            continue
        status = ray_jobs.get(latest)
        if (status in RUNNING and latest not in dead_drivers) or _stepped_recently(storage, name, latest):
            continue
        resubmissions = sum(1 for e in events if e["event"] == "submitted" and e.get("after_lost_driver"))
        found.append(Orphan(name, latest, status, resubmissions))
    return found


def _stepped_recently(storage: str, name: str, submission_id: str, within_s: float = 15.0) -> bool:
    """A job whose rank 0 logged a step moments ago is alive, whatever Ray's job table says: it
    is never resubmitted (two drivers of one job must not run)."""
    import time

    last = last_step_at(storage, name, submission_id)
    return last is not None and time.time() - last < within_s


def last_step_at(storage: str, name: str, submission_id: str) -> float | None:
    """When rank 0 of a submission last logged a step (its metrics file's time); None if never."""
    metrics = history.job_dir(storage, name) / "runs" / submission_id / "metrics.jsonl"
    try:
        return metrics.stat().st_mtime
    except FileNotFoundError:
        return None


def resubmit(client: Any, storage: str, orphan: Orphan, python: str, fleet: str | None = None) -> str | None:
    """Submit an orphaned job again with its recorded spec and run info; None when its restart
    budget is spent (then it is recorded as failed). `python`: the driver's interpreter (`python_for`)."""
    events = history.events(storage, orphan.job)
    submitted = next(e for e in reversed(events) if e["event"] == "submitted")
    spec = JobSpec.model_validate(submitted["spec"])
    budget = spec.failure.max_restarts
    if budget >= 0 and orphan.resubmissions >= budget:
        history.record(storage, orphan.job, "finished", submission_id=orphan.submission_id, state="FAILED",
                       error=f"its driver was lost {orphan.resubmissions + 1} times (failure.max_restarts={budget})")
        return None
    submission_id = new_submission_id(spec.name)
    run = dataclasses.replace(RunInfo.from_json(submitted["run"]), submission_id=submission_id)
    placement = submitted.get("placement") or {}
    submit_driver(client, spec, run, python, job_metadata(spec), placement)
    history.record(storage, spec.name, "submitted", submission_id=submission_id, pool=spec.pool,
                   strategy=spec.parallelism.strategy, steps=spec.steps, spec=spec.model_dump(mode="json"),
                   run=run.to_json(), placement=placement, after_lost_driver=True,
                   previous=orphan.submission_id, user=CONTROLLER_NAME, fleet=fleet or submitted.get("fleet"))
    log.warning("job %s lost its driver (%s, Ray says %s); resubmitted as %s", spec.name, orphan.submission_id,
                orphan.ray_status or "nothing: a new cluster", submission_id)
    return submission_id


def dead_drivers(actors: Mapping[Any, Any]) -> frozenset[str]:
    """Submission ids whose JobSupervisor actor is DEAD, from the GCS actor table."""
    dead = 4  # ActorTableData.ActorState.DEAD
    found = (submission_of_driver_actor(info.name) for info in actors.values() if info.state == dead)
    return frozenset(submission for submission in found if submission is not None)
