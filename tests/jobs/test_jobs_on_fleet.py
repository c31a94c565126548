"""Training jobs through the CLI on a real local fleet: Ray Jobs, Ray Train, node loss, stop, and
checkpoints on S3 (moto_server, behind a proxy that can hold uploads) surviving a killed worker."""
from __future__ import annotations

import json
import math
import signal
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from tests.support.fleet import Fleet, running_fleet
from tests.support.fleet_jobs import (history, job_curve, job_file, jobs, run_curve, started_events, train_workers,
                                      wait_for_job)
from tests.support.fleet_processes import instance_of, node_raylet
from tests.support.moto_s3 import S3Proxy, create_bucket, keys, proxy_for, s3_server
from tests.support.specs import h100_pool, job_spec
from tests.conftest import wait_until

pytestmark = pytest.mark.ray

POOLS = [h100_pool(cpus_per_node=2, memory="8Gi", min_nodes=1, max_nodes=5, nodes=4)]
SMALL = {"workers": 1, "resources": {"cpus": 1}, "data": {"seq_len": 64, "global_batch": 4},
         "optimizer": {"warmup_steps": 2}, "steps": 6, "checkpoint": {"every": 6}}


@pytest.fixture(scope="module")
def moto() -> Iterator[str]:
    """moto_server, started before the fleet: its test credentials are in every node's environment."""
    yield from s3_server()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, moto: str) -> Iterator[Fleet]:
    yield from running_fleet(tmp_path_factory.mktemp("jobs"), "t-jobs", POOLS)


@pytest.fixture
def proxy(moto: str) -> Iterator[S3Proxy]:
    yield from proxy_for(moto)


def small_job(name: str, **changes: Any) -> dict[str, Any]:
    """A six-step job of one worker; `changes` replace its parts."""
    return job_spec(name, **{**SMALL, **changes})


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


def test_node_killed_mid_run_resumes_from_its_checkpoint_and_finishes(fleet: Fleet) -> None:
    steps = 200
    path = job_file(fleet, small_job("survivor", workers=2, steps=steps, checkpoint={"every": 10},
                                     data={"seq_len": 128, "global_batch": 8}))
    assert fleet.cli("submit", "-f", str(path)).returncode == 0
    submission = wait_for_job(fleet, "survivor", ("RUNNING",))["submission_id"]
    wait_until(lambda: (jobs(fleet)["survivor"]["step"] or 0) >= 25, 240, "survivor past step 25")
    workers = train_workers(fleet)
    assert len(workers) == 2
    node_raylet(fleet, instance_of(fleet, workers[0])).send_signal(signal.SIGKILL)  # the node under a worker
    row = wait_for_job(fleet, "survivor", ("SUCCEEDED", "FAILED"), timeout=400)
    assert row["status"] == "SUCCEEDED" and row["step"] == steps
    attempts = [e for e in started_events(fleet, "survivor") if e["submission_id"] == submission]
    points = run_curve(fleet, "survivor", submission)
    assert points[-1]["step"] == steps
    first = {p["step"]: p["loss"] for p in points if p["restarts"] == 0}
    redone = {p["step"]: p["loss"] for p in points if p["restarts"] == 1}
    # resumed from a checkpoint the first attempt reached, not from step 0
    assert len(attempts) >= 2 and 0 < attempts[1]["from_step"] <= max(first)
    assert min(redone) == attempts[1]["from_step"] + 1
    assert set(first) | set(redone) == set(range(1, steps + 1))  # no gap in the curve
    shared = set(first) & set(redone)  # steps after the checkpoint, done again: the same losses
    assert all(abs(first[s] - redone[s]) < 1e-4 for s in shared)
    wait_until(lambda: fleet.pools()["h100"]["ready"] == 4, 180, "the fleet to replace the killed node")


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


def test_a_job_on_prepared_shards_stopped_on_2_workers_resumes_on_1_with_the_same_tokens(
        fleet: Fleet, tmp_path: Path) -> None:
    """Every step's global batch (its digest in the metrics: the windows' CRCs in rank order) is
    the one the pure order names, before the stop on 2 workers and after the resume on 1; the
    validation loss shows in `rayfleet jobs` and `rayfleet job`."""
    from rayfleet.jobs.client.spec import DataSection
    from rayfleet.jobs.data.prepare import prepare
    from rayfleet.jobs.worker.data import batch_digest, build_data, window_crcs

    prepare(["/usr/share/common-licenses/GPL-3", "/usr/share/common-licenses/Apache-2.0"], tmp_path / "shards",
            workers=1, chunk_bytes=8 << 10)
    data = {"tokens": str(tmp_path / "shards"), "seq_len": 32, "global_batch": 4,
            "validation": {"fraction": 0.05, "eval_every": 10, "eval_batches": 1}}
    steps = 120
    spec = small_job("own-data", workers=2, steps=steps, checkpoint={"every": 5}, data=data, step_time_s=0.25)
    path = job_file(fleet, spec)
    assert fleet.cli("submit", "-f", str(path)).returncode == 0
    wait_until(lambda: max((e["step"] for e in history(fleet, "own-data") if e["event"] == "step"), default=0) >= 12,
               300, "own-data past step 12", interval=0.1)
    assert fleet.cli("stop", "own-data").returncode == 0
    wait_for_job(fleet, "own-data", ("STOPPED",), timeout=120)
    path.write_text(yaml.safe_dump({**spec, "workers": 1}))
    assert fleet.cli("submit", "-f", str(path)).returncode == 0
    row = wait_for_job(fleet, "own-data", ("SUCCEEDED", "FAILED"), timeout=400)
    assert row["status"] == "SUCCEEDED" and row["step"] == steps
    starts = [e for e in started_events(fleet, "own-data")]
    assert [e["world"] for e in starts] == [2, 1] and 10 <= starts[-1]["from_step"] < steps, starts
    expected = build_data(DataSection.model_validate(data), seed=0).train
    points = job_curve(fleet, "own-data")
    assert {p["step"] for p in points} == set(range(1, steps + 1))
    for point in points:  # metrics step k trained on batch k - 1
        assert point["batch_crc"] == batch_digest(window_crcs(*expected.batch(point["step"] - 1))), point
    assert row["val_loss"] is not None and abs(row["val_perplexity"] - math.exp(row["val_loss"])) < 1e-6
    table = fleet.cli("jobs")
    assert "VAL" in table.stdout, table.stdout
    detail = fleet.cli("job", "own-data")
    assert f"validation loss {row['val_loss']:.4f}" in detail.stdout, detail.stdout
    assert (json.loads(fleet.cli("job", "own-data", "-o", "json").stdout)["validation"]["step"] == steps)


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
