"""The job contract: what a job's processes hand each other.

The client (`rayfleet submit`, the controller's resubmission, a rendered RayJob) starts the driver
through Ray's Job API with the job's spec and run info in the job's runtime environment; Ray Train
workers inherit that environment. This module holds the names and values they agree on: the
environment variables, the run info, the driver's command and the submission ids. It imports no
other part of jobs/, so every runtime can import it.
"""
from __future__ import annotations

import dataclasses
import json
import secrets
import sys
import time
from dataclasses import dataclass

from rayfleet.cluster.spec.capabilities import Capabilities

SPEC_ENV = "RAYFLEET_JOB_SPEC"
"""The job's validated spec, as `JobSpec.model_dump_json()`."""
RUN_ENV = "RAYFLEET_JOB_RUN"
"""The job's run info, as `RunInfo.to_json()`."""
WORKER_SETUP_HOOK_ENV = "__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR"
"""Ray's worker process setup hook (ray_constants.WORKER_PROCESS_SETUP_HOOK_ENV_VAR): the dotted
path of a function every worker process of the runtime environment runs when it starts."""

# Ray Train's settings that the client sets for the driver (Ray Train's controller reads them).
HEALTH_CHECK_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
COLLECTIVE_TIMEOUT_ENV = "RAY_TRAIN_COLLECTIVE_TIMEOUT_S"
PREEMPTION_POLL_ENV = "RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S"

DRIVER_MODULE = "rayfleet.jobs.driver.entrypoint"
DRIVER_ACTOR_PREFIX = "_ray_internal_job_actor_"
"""Ray Jobs names each job's JobSupervisor actor (the driver's parent) this + its submission id."""


def driver_command(python: str) -> str:
    """The Ray job's entrypoint: the driver module run by `python`."""
    return f"{python} -m {DRIVER_MODULE}"


def python_for(capabilities: Capabilities) -> str:
    """The driver's interpreter: where nodes run on this machine, in this interpreter's
    environment; other fleets' images have rayfleet on the `python` of their PATH."""
    return sys.executable if capabilities.nodes_on_this_machine else "python"


@dataclass(frozen=True)
class RunInfo:
    """What a job's driver and workers need besides its spec, carried in RUN_ENV.

    The fields are in the order of the JSON (`to_json`), which the job's history keeps: a
    resubmission reads it back and a driver of any version reads what was recorded.
    """

    storage: str                      # the fleet's storage path: checkpoints and history
    device: str                       # "cpu" or "cuda"
    gpus_per_worker: float
    workers_per_node: int = 1         # the job's workers one node of its pool holds
    peak_tflops: float | None = None  # per GPU, for MFU; None on CPU
    submission_id: str | None = None  # None in a RayJob manifest: its driver makes one
    checkpoint_storage: str | None = None       # the fleet's s3:// for checkpoints (a job's own wins)
    checkpoint_endpoint_url: str | None = None  # and its S3 endpoint (no credentials: those stay in the env)

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        for optional in ("submission_id", "checkpoint_storage", "checkpoint_endpoint_url"):
            if data[optional] is None:  # absent, as written before these fields existed
                del data[optional]
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> RunInfo:
        data = json.loads(text)
        return cls(**{field.name: data[field.name] for field in dataclasses.fields(cls) if field.name in data})


def new_submission_id(name: str) -> str:
    """`<name>-<local time>-<4 hex digits>`: a name is submitted many times, each submission of it
    continues from the name's newest checkpoint."""
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def submission_of_driver_actor(actor_name: str) -> str | None:
    """The submission id whose JobSupervisor actor this is; None for any other actor."""
    return actor_name[len(DRIVER_ACTOR_PREFIX):] if actor_name.startswith(DRIVER_ACTOR_PREFIX) else None
