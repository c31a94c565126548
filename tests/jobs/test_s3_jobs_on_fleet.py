"""Checkpoints on S3 through the CLI on a real local fleet (moto_server behind a proxy that can
hold uploads): a killed worker's job resumes from its newest checkpoint on S3, and a crash during
an asynchronous upload leaves the previous checkpoint committed."""
from __future__ import annotations

import signal
from typing import Any, Iterator

import pytest

from tests.support.fleet import Fleet, running_fleet
from tests.support.fleet_jobs import (JOBS_POOLS, history, job_file, jobs, small_job, started_events, train_workers,
                                      wait_for_job)
from tests.support.moto_s3 import S3Proxy, create_bucket, keys, proxy_for, s3_server
from tests.conftest import wait_until

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def moto() -> Iterator[str]:
    """moto_server, started before the fleet: its test credentials are in every node's environment."""
    yield from s3_server()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, moto: str) -> Iterator[Fleet]:
    yield from running_fleet(tmp_path_factory.mktemp("s3jobs"), "t-s3jobs", JOBS_POOLS)


@pytest.fixture
def proxy(moto: str) -> Iterator[S3Proxy]:
    yield from proxy_for(moto)


def s3_job(name: str, proxy: S3Proxy, mode: str, **extra: Any) -> dict[str, Any]:
    """A 2-worker job of 30 steps padded to 0.3 s, checkpointing every 5 steps to s3://<name>/ckpt."""
    create_bucket(proxy.upstream, name)
    return small_job(name, workers=2, steps=30, step_time_s=0.3, data={"seq_len": 64, "global_batch": 4},
                     checkpoint={"every": 5, "mode": mode, "storage": f"s3://{name}/ckpt", "endpoint_url": proxy.url},
                     **extra)


def committed_on_s3(proxy: S3Proxy, bucket: str) -> list[str]:
    """The committed checkpoints in the bucket (`<submission>/rayfleet-step-N`), sorted."""
    return sorted(key.split("/", 4)[4].rsplit("/", 1)[0] for key in keys(proxy.upstream, bucket)
                  if key.endswith("/COMMITTED"))


def steps_done(fleet: Fleet, name: str) -> int:
    return max((e["step"] for e in history(fleet, name) if e["event"] == "step"), default=0)


def kill_a_train_worker(fleet: Fleet) -> None:
    workers = wait_until(lambda: (found := train_workers(fleet)) and len(found) == 2 and found, 30, "2 train workers")
    workers[1].send_signal(signal.SIGKILL)


def test_an_s3_job_checkpoints_and_resumes_after_a_worker_is_killed(fleet: Fleet, proxy: S3Proxy) -> None:
    """The job's checkpoints go only to S3; a killed worker's job resumes from the newest one there."""
    assert fleet.cli("submit", "-f", str(job_file(fleet, s3_job("s3-sync", proxy, "sync")))).returncode == 0
    wait_until(lambda: committed_on_s3(proxy, "s3-sync") and steps_done(fleet, "s3-sync") >= 12, 300,
               "s3-sync past step 12 with a checkpoint on S3", interval=0.1)
    kill_a_train_worker(fleet)
    row = wait_for_job(fleet, "s3-sync", ("SUCCEEDED", "FAILED"), timeout=400)
    assert row["status"] == "SUCCEEDED" and row["step"] == 30
    starts = started_events(fleet, "s3-sync")
    assert len(starts) >= 2 and 10 <= starts[1]["from_step"] < 30, starts
    submission = row["submission_id"]
    assert committed_on_s3(proxy, "s3-sync") == [f"{submission}/rayfleet-step-00000025",
                                                 f"{submission}/rayfleet-step-00000030"]  # keep: 2
    assert not list(fleet.job_dir("s3-sync").glob("runs/*/*rayfleet-step-*"))  # none in the fleet's storage


def test_a_crash_during_an_async_save_to_s3_resumes_from_the_previous_checkpoint(fleet: Fleet, proxy: S3Proxy) -> None:
    """Step 10's uploads are held at the store while the job trains on; a worker killed then leaves
    step 5 the newest committed checkpoint, and the job resumes from it and finishes."""
    proxy.hold("rayfleet-step-00000010/__")  # the ranks' shard files
    # no hang found while the job waits at step 15 for the held checkpoint: only the kill ends it
    spec = s3_job("s3-async", proxy, "async", hang={"margin_s": 300})
    assert fleet.cli("submit", "-f", str(job_file(fleet, spec))).returncode == 0
    wait_until(proxy.held_now, 300, "step 10's upload to reach the store", interval=0.1)
    submission = jobs(fleet)["s3-async"]["submission_id"]
    assert committed_on_s3(proxy, "s3-async") == [f"{submission}/rayfleet-step-00000005"]
    kill_a_train_worker(fleet)
    wait_until(lambda: len(started_events(fleet, "s3-async")) >= 2, 300, "s3-async's second attempt")
    assert committed_on_s3(proxy, "s3-async") == [f"{submission}/rayfleet-step-00000005"]  # 10 never committed
    proxy.release()  # held requests fail; the second attempt's uploads go through
    row = wait_for_job(fleet, "s3-async", ("SUCCEEDED", "FAILED"), timeout=400)
    assert row["status"] == "SUCCEEDED" and row["step"] == 30
    assert started_events(fleet, "s3-async")[1]["from_step"] == 5
