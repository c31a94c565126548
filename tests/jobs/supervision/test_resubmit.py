"""Which jobs lost their driver: the job's own history against Ray's job and actor tables."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from rayfleet.jobs.client.spec import JobSpec
from rayfleet.jobs.client.submit import job_metadata
from rayfleet.jobs.contract import RUN_ENV
from rayfleet.jobs.supervision import history
from rayfleet.jobs.supervision.resubmit import dead_drivers, orphans, resubmit


def submitted(storage: Path, name: str, submission: str, **extra: object) -> None:
    history.record(storage, name, "submitted", submission_id=submission, spec={}, **extra)


def test_a_running_job_is_no_orphan_but_a_driverless_one_is(tmp_path: Path) -> None:
    submitted(tmp_path, "a", "a-1")
    submitted(tmp_path, "b", "b-1")
    submitted(tmp_path, "c", "c-1")
    history.record(tmp_path, "c", "finished", submission_id="c-1", state="FAILED")  # failed for good
    found = {o.job: o for o in orphans(str(tmp_path), {"a-1": "RUNNING", "b-1": "FAILED", "c-1": "FAILED"})}
    assert sorted(found) == ["b"] and found["b"].ray_status == "FAILED"
    assert sorted(o.job for o in orphans(str(tmp_path), {})) == ["a", "b"]  # a new cluster knows neither


def test_ray_saying_running_is_not_trusted_when_the_driver_actor_is_dead(tmp_path: Path) -> None:
    submitted(tmp_path, "a", "a-1")
    assert orphans(str(tmp_path), {"a-1": "RUNNING"}) == []
    assert [o.job for o in orphans(str(tmp_path), {"a-1": "RUNNING"}, frozenset({"a-1"}))] == ["a"]


def test_a_job_that_stepped_moments_ago_is_never_resubmitted(tmp_path: Path) -> None:
    submitted(tmp_path, "a", "a-1")
    metrics = history.job_dir(tmp_path, "a") / "runs" / "a-1" / "metrics.jsonl"
    metrics.parent.mkdir(parents=True)
    metrics.write_text(json.dumps({"step": 3}) + "\n")
    assert orphans(str(tmp_path), {}, frozenset({"a-1"})) == []
    old = time.time() - 60
    os.utime(metrics, (old, old))
    assert [o.job for o in orphans(str(tmp_path), {}, frozenset({"a-1"}))] == ["a"]


def test_a_cell_resubmits_only_the_jobs_its_own_fleet_runs_now(tmp_path: Path) -> None:
    # cells of one federation share storage: c2 sees c1's job, and c1 (back) sees the job moved away
    submitted(tmp_path, "mine", "mine-1", fleet="fed-c2")
    submitted(tmp_path, "theirs", "theirs-1", fleet="fed-c1")
    submitted(tmp_path, "moved", "moved-1", fleet="fed-c1")
    submitted(tmp_path, "moved", "moved-2", fleet="fed-c2")
    submitted(tmp_path, "old", "old-1")  # recorded before submissions named their fleet: anyone's
    assert sorted(o.job for o in orphans(str(tmp_path), {}, fleet="fed-c2")) == ["mine", "moved", "old"]
    assert sorted(o.job for o in orphans(str(tmp_path), {}, fleet="fed-c1")) == ["old", "theirs"]
    assert len(orphans(str(tmp_path), {})) == 4  # a caller without a fleet: every job


def test_resubmissions_are_counted_across_submissions(tmp_path: Path) -> None:
    submitted(tmp_path, "a", "a-1")
    submitted(tmp_path, "a", "a-2", after_lost_driver=True)
    [orphan] = orphans(str(tmp_path), {})
    assert (orphan.submission_id, orphan.resubmissions) == ("a-2", 1)
    summary = history.summary(tmp_path, "a")
    assert summary["restarts"] == 1 and summary["submission_id"] == "a-2"


def test_dead_driver_actors_are_read_from_the_actor_table() -> None:
    actors = {1: SimpleNamespace(name="_ray_internal_job_actor_j-1", state=4),
              2: SimpleNamespace(name="_ray_internal_job_actor_j-2", state=2),
              3: SimpleNamespace(name="rayfleet-controller", state=4)}
    assert dead_drivers(actors) == frozenset({"j-1"})


def test_a_resubmission_carries_the_recorded_run_info_under_a_new_submission_id(tmp_path: Path) -> None:
    spec = JobSpec.model_validate({"name": "a", "pool": "p"})
    run = ('{"storage": "%s", "device": "cpu", "gpus_per_worker": 0.0, "workers_per_node": 2, "peak_tflops": null, '
           '"submission_id": "a-1"}' % tmp_path)
    placement = {"entrypoint_label_selector": {"rayfleet.io/pool": "p"}}
    history.record(tmp_path, "a", "submitted", submission_id="a-1", spec=spec.model_dump(mode="json"), run=run,
                   placement=placement)
    calls: list[dict[str, Any]] = []
    client = SimpleNamespace(submit_job=lambda **kwargs: calls.append(kwargs))
    [orphan] = orphans(str(tmp_path), {})
    new = resubmit(client, str(tmp_path), orphan, "python")
    [call] = calls
    assert new is not None and new != "a-1" and call["submission_id"] == new
    assert call["entrypoint"] == "python -m rayfleet.jobs.driver.entrypoint"
    assert call["metadata"] == job_metadata(spec) and call["entrypoint_label_selector"] == {"rayfleet.io/pool": "p"}
    expected = run.replace('"a-1"', json.dumps(new))  # the recorded JSON, but for the submission id
    assert call["runtime_env"]["env_vars"][RUN_ENV] == expected
    latest = history.events(tmp_path, "a")[-1]
    assert (latest["run"], latest["after_lost_driver"], latest["previous"]) == (expected, True, "a-1")
