"""One way to start a job's driver: what `submit_driver` asks of Ray's Job API."""
from __future__ import annotations

import json
import sys
from typing import Any

from rayfleet.cluster.spec.capabilities import capabilities
from rayfleet.jobs.client.spec import JobSpec
from rayfleet.jobs.client.submit import job_metadata, submit_driver
from rayfleet.jobs.contract import RUN_ENV, SPEC_ENV, RunInfo, python_for


class JobApi:
    """Ray's JobSubmissionClient, as far as submitting goes: it keeps what it was asked."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def submit_job(self, **kwargs: Any) -> str:
        self.calls.append(kwargs)
        return str(kwargs["submission_id"])


SPEC = JobSpec.model_validate({"name": "j", "pool": "p", "failure": {"poll_interval_s": 0.25}})
RUN = RunInfo(storage="/s", device="cpu", gpus_per_worker=0.0, submission_id="j-1")


def test_a_submission_runs_the_driver_with_the_spec_run_info_and_ray_trains_periods() -> None:
    api = JobApi()
    placement = {"entrypoint_label_selector": {"rayfleet.io/pool": "p"}}
    submit_driver(api, SPEC, RUN, python_for(capabilities("local")), job_metadata(SPEC), placement)
    [call] = api.calls
    env = call["runtime_env"]["env_vars"]
    assert call["entrypoint"] == f"{sys.executable} -m rayfleet.jobs.driver.entrypoint"
    assert (call["submission_id"], call["entrypoint_num_cpus"]) == ("j-1", 0)
    assert call["metadata"]["rayfleet.io/job"] == "j" and call["entrypoint_label_selector"] == {"rayfleet.io/pool": "p"}
    assert JobSpec.model_validate_json(env[SPEC_ENV]) == SPEC and RunInfo.from_json(env[RUN_ENV]) == RUN
    assert env["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "0.25" and env["RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S"] == "0.5"


def test_with_ray_trains_defaults_only_the_spec_and_run_info_travel() -> None:
    api = JobApi()
    submit_driver(api, SPEC, RUN, "python", ray_train_defaults=True)
    [call] = api.calls
    assert call["entrypoint"] == "python -m rayfleet.jobs.driver.entrypoint" and call["metadata"] is None
    assert set(call["runtime_env"]["env_vars"]) == {SPEC_ENV, RUN_ENV}
    assert json.loads(call["runtime_env"]["env_vars"][RUN_ENV])["submission_id"] == "j-1"
