"""Training jobs through the CLI on a real local fleet: Ray Jobs and Ray Train run every parallel
strategy, bad jobs are refused, a stopped job continues from its checkpoint. (Node loss and
resumption: test_resume_on_fleet.py; checkpoints on S3: test_s3_jobs_on_fleet.py; each module
has its own fleet so that `make test` runs them side by side.)"""
from __future__ import annotations

from typing import Iterator

import pytest

from tests.support.fleet import Fleet, running_fleet
from tests.support.fleet_jobs import JOBS_POOLS, job_file, jobs, run_curve, small_job, started_events, wait_for_job
from tests.conftest import wait_until

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    yield from running_fleet(tmp_path_factory.mktemp("jobs"), "t-jobs", JOBS_POOLS)


def test_parallel_strategies_agree_with_one_worker_through_ray_train(fleet: Fleet) -> None:
    runs = {"ddp1": {}, "ddp2": {"workers": 2},
            "fsdp2": {"workers": 2, "parallelism": {"strategy": "fsdp"}},
            "moe1": {"parallelism": {"strategy": "moe"}, "model": {"preset": "tiny_moe"}},
            "moe2": {"workers": 2, "parallelism": {"strategy": "moe", "expert_parallel": 2},
                     "model": {"preset": "tiny_moe"}}}
    for name, extra in runs.items():
        result = fleet.cli("submit", "-f", str(job_file(fleet, small_job(name, **extra))))
        assert result.returncode == 0, result.stderr
    rows = {name: wait_for_job(fleet, name, ("SUCCEEDED", "FAILED"), timeout=400) for name in runs}
    assert all(row["status"] == "SUCCEEDED" for row in rows.values()), rows
    assert (rows["fsdp2"]["pool"], rows["fsdp2"]["strategy"]) == ("h100", "fsdp")  # metadata, as the Jobs view shows
    losses = {name: [m["loss"] for m in run_curve(fleet, name, row["submission_id"])] for name, row in rows.items()}
    assert all(len(values) == 6 for values in losses.values())
    for a, b in (("ddp2", "ddp1"), ("fsdp2", "ddp2"), ("moe2", "moe1")):
        assert max(abs(x - y) for x, y in zip(losses[a], losses[b])) < 1e-4, (a, losses[a], b, losses[b])


def test_bad_jobs_are_refused_with_exit_2_and_nothing_is_submitted(fleet: Fleet) -> None:
    before = jobs(fleet)
    cases = {"no-pool": {"pool": "a100"}, "too-many": {"workers": 40, "data": {"seq_len": 64, "global_batch": 40}},
             "gpus": {"resources": {"cpus": 1, "gpus": 9}}, "preset": {"model": {"preset": "nope"}},
             "option": {"model": {"preset": "tiny", "overrides": {"windw": 3}}}, "typo": {"step": 5}}
    for name, extra in cases.items():
        path = job_file(fleet, small_job(f"bad-{name}", **extra))
        result = fleet.cli("submit", "-f", str(path))
        assert result.returncode == 2, (name, result.stdout, result.stderr)
        assert path.name in result.stderr and "Traceback" not in result.stderr, (name, result.stderr)
    assert jobs(fleet).keys() == before.keys()


def test_stopped_job_continues_from_its_checkpoint_when_submitted_again(fleet: Fleet) -> None:
    path = job_file(fleet, small_job("pausable", workers=2, steps=150, checkpoint={"every": 10},
                                     data={"seq_len": 128, "global_batch": 8}))
    assert fleet.cli("submit", "-f", str(path)).returncode == 0
    wait_until(lambda: (jobs(fleet)["pausable"]["step"] or 0) >= 25, 240, "pausable past step 25")
    stopped = fleet.cli("stop", "pausable")
    assert stopped.returncode == 0, stopped.stderr
    wait_for_job(fleet, "pausable", ("STOPPED",), timeout=120)
    again = fleet.cli("submit", "-f", str(path))
    assert again.returncode == 0, again.stderr
    row = wait_for_job(fleet, "pausable", ("SUCCEEDED", "FAILED"), timeout=400)
    assert row["status"] == "SUCCEEDED" and row["step"] == 150
    starts = started_events(fleet, "pausable")
    assert len({e["submission_id"] for e in starts}) == 2
    assert starts[-1]["from_step"] >= 20
    assert "pausable" in jobs(fleet, every=True)
    logs = fleet.cli("logs", "pausable")
    assert logs.returncode == 0 and f"resumed from step {starts[-1]['from_step']}" in logs.stdout
