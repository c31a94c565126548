"""Submitting and controlling jobs through Ray's Job Submission API.

A job is submitted with metadata (`rayfleet.io/job`, pool, strategy, workers) so the dashboard's
Jobs view shows what it is, and with its spec and run info in the runtime_env (jobs/contract.py).
A name can be submitted many times; each submission continues from the name's newest checkpoint.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

from rayfleet.cluster.health import flight_recorder
from rayfleet.cluster.rayio import gcs
from rayfleet.cluster.rayio.connection import HEAD_RESTART_WAIT_S, Connection, await_head
from rayfleet.errors import BadInput, FleetNotRunning, NotFound
from rayfleet.cluster.spec.fleet import ACCELERATOR_PEAK_TFLOPS, FleetSpec
from rayfleet.cluster.head.supervisor import head_in_progress
from rayfleet.names import JOB_LABEL, POOL_LABEL, progress_key
from rayfleet.jobs.contract import (COLLECTIVE_TIMEOUT_ENV, HEALTH_CHECK_ENV, PREEMPTION_POLL_ENV, RUN_ENV, SPEC_ENV,
                                    RunInfo, driver_command, new_submission_id, python_for)
from rayfleet.jobs.supervision import history
from rayfleet.jobs.client.spec import JobSpec, check_against_fleet, gpus_per_worker, validate_data, validate_model, workers_per_node

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
T = TypeVar("T")


def job_client(conn: Connection) -> Any:
    """A client of the fleet's Job Submission API; it waits for a head being started again."""
    from ray.job_submission import JobSubmissionClient

    made: list[Any] = []
    failures: list[Exception] = []

    def answers() -> bool:
        try:
            made.append(JobSubmissionClient(conn.dashboard_url))
        except Exception as error:
            failures.append(error)
        return bool(made)

    # The dashboard serving the job API comes up after the GCS: while the GCS answers (the head
    # runs) or the supervisor is bringing the head back, a job API that does not answer yet is
    # waited for.
    def coming() -> bool:
        return gcs.reachable(conn.gcs_address) or head_in_progress(conn.fleet.path)

    if not await_head(conn.fleet, answers, f"the job API at {conn.dashboard_url}", coming):
        raise FleetNotRunning(f"the job API at {conn.dashboard_url} does not answer ({failures[-1]}); `rayfleet "
                              f"status` checks the fleet, `rayfleet dashboard` the dashboard and its token")
    return made[0]


def through_failover(conn: Connection, call: Callable[[Any, int], T]) -> T:
    """`call(client, attempt)` against the job API. A head that dies under a request (the dashboard
    drops the connection) while its supervisor brings it back is waited for, and the call made
    again on the head that comes back, for up to HEAD_RESTART_WAIT_S; `attempt` (0, 1, ...) lets a
    call that launches check whether its earlier attempt landed before it launches again."""
    import requests

    deadline = time.monotonic() + HEAD_RESTART_WAIT_S
    attempt = 0
    while True:
        client = job_client(conn)
        try:
            return call(client, attempt)
        except requests.exceptions.ConnectionError:
            if time.monotonic() >= deadline or not head_in_progress(conn.fleet.path):
                raise
        attempt += 1
        time.sleep(1.0)


def local_gpus_are_real() -> bool:
    """Whether this machine has NVIDIA GPUs (a local fleet otherwise simulates them)."""
    return any(Path("/dev").glob("nvidia[0-9]*"))


def resolve_device(spec: JobSpec, fleet: FleetSpec) -> str:
    if spec.device != "auto":
        return spec.device
    if fleet.pool(spec.pool).gpus_per_node == 0:
        return "cpu"
    if fleet.capabilities.declared_gpus and not local_gpus_are_real():
        return "cpu"
    return "cuda"


def storage_of(conn: Connection) -> str:
    runtime = conn.store.runtime()
    return runtime.get("storage") or str(conn.fleet.storage_dir)


def run_info(spec: JobSpec, fleet: FleetSpec, storage: str, submission_id: str | None) -> RunInfo:
    """The job's run info on this fleet. Without a submission id the driver makes one (a RayJob
    applied from a manifest)."""
    device = resolve_device(spec, fleet)
    return RunInfo(storage=storage, device=device, gpus_per_worker=gpus_per_worker(spec, fleet),
                   workers_per_node=workers_per_node(spec, fleet),
                   peak_tflops=ACCELERATOR_PEAK_TFLOPS.get(fleet.pool(spec.pool).accelerator or "")
                   if device == "cuda" else None,
                   submission_id=submission_id, checkpoint_storage=fleet.checkpoint_storage,
                   checkpoint_endpoint_url=fleet.checkpoint_endpoint_url)


def driver_placement(spec: JobSpec, fleet: FleetSpec) -> dict[str, Any]:
    """On a fault-tolerant fleet the driver runs on one of the job's pool nodes, not the head: Ray
    Train pins its controller to the driver's node, so the job then trains straight through a head
    restart (measured with Ray 2.60: the same workers kept stepping through a SIGKILL of every head
    process). Elsewhere the driver stays on the head, Ray's default."""
    on_pool = spec.driver == "pool" or (spec.driver == "auto" and fleet.head.fault_tolerance.enabled)
    return {"entrypoint_label_selector": {POOL_LABEL: spec.pool}} if on_pool else {}


def job_environment(spec: JobSpec, run: RunInfo, ray_train_defaults: bool = False) -> dict[str, str]:
    """The job's runtime_env variables: its spec and run info, and Ray Train's polling periods
    (`ray_train_defaults`: Ray Train's own, as the recovery benchmark's Ray-alone baseline runs)."""
    env = {SPEC_ENV: spec.model_dump_json(), RUN_ENV: run.to_json()}
    if ray_train_defaults:
        return env
    return {**env, HEALTH_CHECK_ENV: str(spec.failure.poll_interval_s),
            # Ray Train's own barriers (report, checkpoint) wait forever by default: bound them too.
            COLLECTIVE_TIMEOUT_ENV: str(spec.hang.first_steps_timeout_s),
            # a drain (rayfleet's remediation, a spot notice) is seen within a second, not five
            PREEMPTION_POLL_ENV: str(min(1.0, spec.failure.poll_interval_s * 2)),
            # PyTorch's flight recorder in every rank: a hang's evidence (cluster/health/flight_recorder.py)
            flight_recorder.BUFFER_ENV: str(flight_recorder.BUFFER_SIZE)}


def job_metadata(spec: JobSpec) -> dict[str, str]:
    """Ray job metadata: what the dashboard's Jobs view shows beside the job. `job_name` is the
    key its Name column reads (the column's help in Ray 2.60's dashboard says so)."""
    workers = spec.workers if isinstance(spec.workers, int) else f"{spec.workers.min}-{spec.workers.max}"
    return {JOB_LABEL: spec.name, "job_name": spec.name, "pool": spec.pool, "strategy": spec.parallelism.strategy,
            "workers": str(workers), "model": spec.model.preset, "steps": str(spec.steps)}


def submit_driver(client: Any, spec: JobSpec, run: RunInfo, python: str, metadata: dict[str, str] | None = None,
                  placement: Mapping[str, Any] | None = None, ray_train_defaults: bool = False) -> None:
    """Start submission `run.submission_id` of the job: its driver (contract.DRIVER_MODULE) in
    `python` through `client`, Ray's JobSubmissionClient. Every submission goes through here:
    `submit`, the controller's `resubmit` and the recovery benchmark."""
    if run.submission_id is None:
        raise ValueError("a submission needs its submission id in the run info")
    client.submit_job(entrypoint=driver_command(python), submission_id=run.submission_id,
                      runtime_env={"env_vars": job_environment(spec, run, ray_train_defaults)},
                      metadata=metadata, entrypoint_num_cpus=0, **(placement or {}))


def submit(conn: Connection, spec: JobSpec, path: str | Path) -> str:
    """Check the job against the running fleet, then submit it; returns the submission id."""
    fleet = conn.store.spec()
    if fleet is None:
        raise FleetNotRunning(f"fleet {conn.fleet.name} has no spec stored; run `rayfleet up -f FLEET.yaml`")
    check_against_fleet(spec, fleet, path)
    validate_data(spec, path, validate_model(spec, path).vocab_size)
    storage = storage_of(conn)
    submission_id = new_submission_id(spec.name)
    run = run_info(spec, fleet, storage, submission_id)
    placement = driver_placement(spec, fleet)
    python = python_for(fleet.capabilities)
    through_failover(conn, lambda client, attempt: launch(client, attempt, spec, run, python, placement, path))
    history.record(storage, spec.name, "submitted", submission_id=submission_id, pool=spec.pool,
                   strategy=spec.parallelism.strategy, steps=spec.steps, spec=spec.model_dump(mode="json"),
                   run=run.to_json(), placement=placement, user=os.environ.get("USER", ""),
                   fleet=conn.fleet.name)  # the cluster that owns it now (resubmit.orphans reads it)
    return submission_id


def launch(client: Any, attempt: int, spec: JobSpec, run: RunInfo, python: str, placement: Mapping[str, Any],
           path: str | Path) -> None:
    """Submit the job unless it already runs; safe to repeat (`attempt` > 0) after the head dropped
    the connection: a submission the head took before it died is not made twice."""
    assert run.submission_id is not None
    if attempt and landed(client, run.submission_id):
        return
    running = [job for job in rayfleet_jobs(client, run.storage)
               if job["job"] == spec.name and job["status"] not in TERMINAL]
    if running:
        raise BadInput(f"{path}: name: job {spec.name} is already running as {running[0]['submission_id']}; "
                       f"`rayfleet stop {spec.name}` first, or give this job another name")
    submit_driver(client, spec, run, python, job_metadata(spec), placement)


def landed(client: Any, submission_id: str) -> bool:
    """Whether Ray's job API knows submission `submission_id`."""
    try:
        client.get_job_info(submission_id)
    except RuntimeError:  # Ray's client: "Request failed with status code 404"
        return False
    return True


def rayfleet_jobs(client: Any, storage: str,
                  events_of: Callable[[str], list[dict[str, Any]]] | None = None) -> list[dict[str, Any]]:
    """Ray's jobs that rayfleet submitted, newest first, each settled from its history: a submission
    whose history records its end is in that state (see `settled`). `events_of(name)`: a job's
    history events, when the caller has them already."""
    read = events_of or (lambda name: history.events(storage, name))
    out: list[dict[str, Any]] = []
    histories: dict[str, list[dict[str, Any]]] = {}
    for info in client.list_jobs():
        metadata = info.metadata or {}
        if JOB_LABEL not in metadata:
            continue
        name = metadata[JOB_LABEL]
        if name not in histories:
            histories[name] = read(name)
        out.append({"job": name, "submission_id": info.submission_id,
                    "status": settled(info.submission_id, str(info.status.value), histories[name]),
                    "pool": metadata.get("pool"), "strategy": metadata.get("strategy"),
                    "workers": metadata.get("workers"), "steps": int(metadata.get("steps", 0) or 0),
                    "start_time": (info.start_time or 0) / 1000, "end_time": (info.end_time or 0) / 1000 or None,
                    "message": info.message})
    return sorted(out, key=lambda job: job["start_time"], reverse=True)


def settled(submission_id: str, ray_status: str, events: list[dict[str, Any]]) -> str:
    """A submission's state: the first end its history records (the driver writes it as its last
    act; `stop` and a given-up resubmission write theirs), else Ray's status. Ray's job API reports
    the end only once the driver's process has exited, seconds later: read alone, it would let
    `stop` record STOPPED after SUCCEEDED and refuse to submit a name that has just finished."""
    for event in events:
        if event["event"] == "finished" and event.get("submission_id") == submission_id \
                and event.get("state") in TERMINAL:
            return str(event["state"])
    return ray_status


def progress(conn: Connection, name: str) -> dict[str, Any] | None:
    """The newest progress rank 0 published for job `name`."""
    raw = gcs.kv_get(conn.client, progress_key(name))
    return json.loads(raw) if raw else None


def resolve_submission(client: Any, storage: str, ident: str,
                       events_of: Callable[[str], list[dict[str, Any]]] | None = None) -> dict[str, Any]:
    """A job name (its newest submission) or a submission id -> that submission, settled from its
    history (`rayfleet_jobs`)."""
    jobs = rayfleet_jobs(client, storage, events_of)
    for job in jobs:
        if job["submission_id"] == ident:
            return job
    named = [job for job in jobs if job["job"] == ident]
    if named:
        return named[0]
    known = sorted({job["job"] for job in jobs})
    raise NotFound(f"no job or submission {ident!r}; jobs: {', '.join(known) or 'none'} (`rayfleet jobs`)")


def stop(conn: Connection, ident: str) -> dict[str, Any]:
    client = job_client(conn)
    storage = storage_of(conn)
    job = resolve_submission(client, storage, ident)  # settled: an ended job is not stopped again
    if job["status"] in TERMINAL:
        return {**job, "ended": True}
    client.stop_job(job["submission_id"])
    history.record(storage, job["job"], "finished", submission_id=job["submission_id"], state="STOPPED",
                   step=(progress(conn, job["job"]) or {}).get("step"))
    return job
