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


class DroppingJobApi(JobApi):
    """A job API whose head takes the first submission, then dies before it answers (the
    connection drops), as a head killed mid-request does; the head that comes back knows the job."""

    def __init__(self, take_first: bool) -> None:
        super().__init__()
        self.take_first = take_first
        self.known: set[str] = set()
        self.dropped = False

    def list_jobs(self) -> list[Any]:
        return []

    def get_job_info(self, submission_id: str) -> dict[str, Any]:
        if submission_id not in self.known:
            raise RuntimeError("Request failed with status code 404: Job does not exist.")
        return {"submission_id": submission_id}

    def submit_job(self, **kwargs: Any) -> str:
        import requests

        first, self.dropped = not self.dropped, True
        if not first or self.take_first:
            self.calls.append(kwargs)
            self.known.add(kwargs["submission_id"])
        if first:
            raise requests.exceptions.ConnectionError("Connection aborted: Remote end closed connection")
        return str(kwargs["submission_id"])


def failover(monkeypatch: Any, api: JobApi, coming: bool) -> list[int]:
    """`through_failover` around `launch` against `api`, with the fleet's head `coming` back or not;
    the attempts it made."""
    from rayfleet.jobs.client import submit as module

    attempts: list[int] = []
    monkeypatch.setattr(module, "job_client", lambda conn: api)
    monkeypatch.setattr(module, "head_in_progress", lambda path: coming)
    monkeypatch.setattr(module.time, "sleep", lambda s: None)

    class Conn:
        class fleet:
            path = "/nowhere"

    def call(client: Any, attempt: int) -> None:
        attempts.append(attempt)
        module.launch(client, attempt, SPEC, RUN, "python", {}, "job.yaml")

    module.through_failover(Conn(), call)  # type: ignore[arg-type]
    return attempts


def test_a_submission_the_dying_head_took_is_not_made_twice(monkeypatch: Any) -> None:
    api = DroppingJobApi(take_first=True)
    assert failover(monkeypatch, api, coming=True) == [0, 1]
    assert [call["submission_id"] for call in api.calls] == ["j-1"]  # once, with the id the user was told


def test_a_submission_the_dying_head_lost_is_made_again_on_the_head_that_comes_back(monkeypatch: Any) -> None:
    api = DroppingJobApi(take_first=False)
    assert failover(monkeypatch, api, coming=True) == [0, 1]
    assert [call["submission_id"] for call in api.calls] == ["j-1"]


def test_a_dropped_connection_with_no_head_coming_back_fails_at_once(monkeypatch: Any) -> None:
    import pytest
    import requests

    api = DroppingJobApi(take_first=True)
    with pytest.raises(requests.exceptions.ConnectionError):
        failover(monkeypatch, api, coming=False)


class ListingJobApi(JobApi):
    """A job API that lists jobs in the states Ray gives them, and records stops."""

    def __init__(self, statuses: dict[str, str]) -> None:
        super().__init__()
        self.statuses = statuses
        self.stopped: list[str] = []

    def list_jobs(self) -> list[Any]:
        from types import SimpleNamespace

        return [SimpleNamespace(submission_id=sid, status=SimpleNamespace(value=status), message="",
                                metadata={"rayfleet.io/job": "j", "pool": "p"}, start_time=index, end_time=None)
                for index, (sid, status) in enumerate(self.statuses.items())]

    def stop_job(self, submission_id: str) -> None:
        self.stopped.append(submission_id)


def test_every_reader_takes_a_jobs_end_from_its_history_before_ray_reports_it(monkeypatch: Any, tmp_path: Any) -> None:
    """Right after the driver records SUCCEEDED, Ray's job API still says RUNNING for seconds: the
    job list, `stop` and a new submission of the name go by the history's end."""
    import dataclasses

    from rayfleet.jobs.client import submit as module
    from rayfleet.jobs.supervision import history

    storage = str(tmp_path)
    history.record(storage, "j", "submitted", submission_id="j-0")
    history.record(storage, "j", "finished", submission_id="j-0", state="FAILED")
    history.record(storage, "j", "submitted", submission_id="j-1")
    history.record(storage, "j", "finished", submission_id="j-1", state="SUCCEEDED")
    history.record(storage, "j", "finished", submission_id="j-1", state="STOPPED")  # a late stop: the first end counts
    api = ListingJobApi({"j-0": "RUNNING", "j-1": "RUNNING"})  # Ray has not caught up with either
    assert [(job["submission_id"], job["status"]) for job in module.rayfleet_jobs(api, storage)] == \
        [("j-1", "SUCCEEDED"), ("j-0", "FAILED")]

    monkeypatch.setattr(module, "job_client", lambda conn: api)
    monkeypatch.setattr(module, "storage_of", lambda conn: storage)
    before = history.events(storage, "j")
    assert module.stop(object(), "j")["ended"] is True  # type: ignore[arg-type]
    assert api.stopped == [] and history.events(storage, "j") == before  # no STOPPED after SUCCEEDED

    module.launch(api, 0, SPEC, dataclasses.replace(RUN, storage=storage, submission_id="j-2"), "python", {}, "j.yaml")
    assert [call["submission_id"] for call in api.calls] == ["j-2"]  # the name is free again


def test_a_job_without_an_end_in_its_history_keeps_rays_status(tmp_path: Any) -> None:
    import pytest

    from rayfleet.errors import BadInput
    from rayfleet.jobs.client import submit as module
    from rayfleet.jobs.supervision import history

    history.record(tmp_path, "j", "submitted", submission_id="j-1")
    api = ListingJobApi({"j-1": "RUNNING"})
    assert module.resolve_submission(api, str(tmp_path), "j")["status"] == "RUNNING"
    with pytest.raises(BadInput, match="already running as j-1"):
        module.launch(api, 0, SPEC, RUN, "python", {}, "j.yaml")
