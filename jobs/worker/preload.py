"""Ray's worker process setup hook for a job's training workers (the driver sets it: jobs/driver/warm.py).

Every worker process of the job runs `preload` before it serves anything, so a process the
raylet prestarts has done the imports of a training worker by the time an actor takes it.
"""
from __future__ import annotations

import json
import os

from rayfleet.jobs.contract import RUN_ENV, SPEC_ENV, RunInfo
from rayfleet.jobs.worker import standby


def preload() -> None:
    """The imports run here, synchronously (two threads importing torch at once can deadlock on
    import locks); then the process keeps a standby heartbeat while it idles (jobs/worker/standby.py)."""
    import torch  # noqa: F401
    import torch._dynamo  # noqa: F401  (DistributedDataParallel's constructor imports it: 1.4 s)
    import ray.train.torch  # noqa: F401

    import rayfleet.jobs.worker.loop  # noqa: F401

    job = json.loads(os.environ.get(SPEC_ENV, "{}")).get("name")
    if job:
        submission_id = RunInfo.from_json(os.environ[RUN_ENV]).submission_id if RUN_ENV in os.environ else None
        standby.announce(job, submission_id)


HOOK = f"{__name__}.{preload.__name__}"
"""What Ray's setup hook variable (contract.WORKER_SETUP_HOOK_ENV) names: this function."""
