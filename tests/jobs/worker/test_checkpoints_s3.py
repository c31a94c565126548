"""Sharded checkpoints on S3 (moto_server over HTTP, behind a proxy that can refuse requests), on
real gloo process groups (no Ray): written by 2 ranks synchronously or in the background, they load
on 1 process bit-identically, and old ones are pruned; an upload refused mid-way leaves the
previous checkpoint the newest committed one, and a resumed job goes on from it; `rayfleet export`
reads a checkpoint on S3."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Iterator

import pytest

from rayfleet.jobs.client.spec import JobSpec
from rayfleet.jobs.contract import RunInfo
from rayfleet.jobs.supervision import history
from rayfleet.jobs.worker import checkpoint
from rayfleet.jobs.worker.checkpoint_s3 import S3Path, staging_root
from tests.conftest import rayfleet
from tests.jobs.worker.test_checkpoints import assert_same_state, gathered_state, job, single
from tests.support.checkpoints import full_state, trainer
from tests.support.distributed import on_ranks
from tests.support.moto_s3 import S3Proxy, create_bucket, keys, proxy_for, s3_server


@pytest.fixture(scope="module")
def moto() -> Iterator[str]:
    yield from s3_server()


@pytest.fixture
def proxy(moto: str) -> Iterator[S3Proxy]:
    yield from proxy_for(moto)


def on_s3(spec: JobSpec, proxy: S3Proxy, bucket: str, keep: int = 5) -> JobSpec:
    """`spec` with its checkpoints in s3://bucket/ckpt through the proxy."""
    create_bucket(proxy.upstream, bucket)
    section = spec.checkpoint.model_copy(update={"storage": f"s3://{bucket}/ckpt", "endpoint_url": proxy.url,
                                                 "keep": keep})
    return spec.model_copy(update={"checkpoint": section})


def train_and_gather(rank: int, world: int, spec: JobSpec, storage: str) -> dict[str, Any]:
    made = trainer(spec, Path(storage), rank, world)
    made.train()
    return gathered_state(made)


def committed_steps(made: Any) -> list[int]:
    return [checkpoint.read_meta(p)["step"] for p in checkpoint.checkpoint_dirs(made.checkpoints)]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_written_by_two_ranks_to_s3_loads_on_one_process_bit_identically(tmp_path: Path, proxy: S3Proxy,
                                                                         mode: str) -> None:
    """FSDP2 shards uploaded by 2 ranks (each from its own staging folder) read back on 1 process into
    exactly the state the ranks held; only the newest `keep` checkpoints stay in the bucket."""
    bucket = f"ckpt-{mode}"
    spec = on_s3(job("fsdp", 2, steps=6, mode=mode), proxy, bucket, keep=2)
    want = on_ranks(2, train_and_gather, spec, str(tmp_path))
    made = trainer(single(spec), tmp_path, submission="eval")
    latest = checkpoint.latest_checkpoint(made.checkpoints)
    assert isinstance(latest, S3Path) and str(latest) == f"s3://{bucket}/ckpt/jobs/t/runs/t/rayfleet-step-00000006"
    assert committed_steps(made) == [4, 6]
    prefix = "ckpt/jobs/t/runs/t/rayfleet-step-00000006/"
    assert keys(proxy.upstream, bucket, prefix) == [prefix + name for name in (
        ".metadata", "COMMITTED", "__0_0.distcp", "__1_0.distcp", "meta.json", "rng-00000.pt", "rng-00001.pt")]
    # step 2 pruned, every object of it
    assert {k.split("/")[5] for k in keys(proxy.upstream, bucket)} == {"rayfleet-step-00000004", "rayfleet-step-00000006"}
    assert made.checkpointer.load(latest)["step"] == 6
    assert_same_state(full_state(made), want)
    assert not (staging_root() / "staging" / bucket).exists() and not (staging_root() / "loading" / bucket).exists()
    assert not list((tmp_path / "jobs" / "t").glob("runs/*/*rayfleet-step-*"))  # nothing in the job folder


def train_then_fail_uploading(rank: int, world: int, spec: JobSpec, storage: str) -> list[int]:
    """Checkpoint step 2, then step 4, whose rank-1 shard the store refuses."""
    made = trainer(spec, Path(storage), rank, world)
    made.train()
    made.step = 4
    with pytest.raises(RuntimeError, match=r"could not be uploaded by rank\(s\) \[1\]"):
        made.save()  # synchronous: raises here; asynchronous: at the wait
        made.finish_checkpoint()
    return committed_steps(made)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_an_upload_failing_mid_way_leaves_the_previous_checkpoint_the_newest(tmp_path: Path, proxy: S3Proxy,
                                                                            mode: str) -> None:
    bucket = f"refused-{mode}"
    spec = on_s3(job(workers=2, mode=mode), proxy, bucket)
    proxy.fail("rayfleet-step-00000004/__1_0.distcp")
    assert on_ranks(2, train_then_fail_uploading, spec, str(tmp_path)) == [2]
    step4 = "ckpt/jobs/t/runs/t/rayfleet-step-00000004/"
    uploaded = keys(proxy.upstream, bucket, step4)
    assert step4 + "__0_0.distcp" in uploaded and step4 + checkpoint.MARKER not in uploaded  # mid-way
    proxy.release()
    made = trainer(single(spec).model_copy(update={"steps": 4}), tmp_path, submission="again")
    made.train()  # resumes from step 2, prunes the uncommitted step 4 of the first run
    assert made.checkpoint_step == 4 and committed_steps(made) == [2, 4]
    assert not keys(proxy.upstream, bucket, step4)


def test_export_reads_a_checkpoint_on_s3(tmp_path: Path, proxy: S3Proxy) -> None:
    spec = on_s3(job(steps=2), proxy, "exported")
    history.record(tmp_path, "t", "submitted", submission_id="t", spec=spec.model_dump(mode="json"))
    trainer(spec, tmp_path).train()
    out = tmp_path / "out"
    done = rayfleet("export", "t", "--storage", str(tmp_path), "-o", str(out))
    assert done.returncode == 0, done.stderr
    source = json.loads((out / "rayfleet.json").read_text())
    assert (source["step"], source["checkpoint"]) == (2, "s3://exported/ckpt/jobs/t/runs/t/rayfleet-step-00000002")
    assert "testing" not in (out / "rayfleet.json").read_text()  # no credential in what is written


def test_a_jobs_checkpoints_go_where_the_job_chose_else_the_fleet_else_its_folder(tmp_path: Path) -> None:
    spec, job_dir = job(), tmp_path / "jobs" / "t"
    run = RunInfo(storage=str(tmp_path), device="cpu", gpus_per_worker=0, submission_id="t")
    assert checkpoint.home(job_dir, spec, run) == job_dir
    fleets = dataclasses.replace(run, checkpoint_storage="s3://fleet/ckpt", checkpoint_endpoint_url="http://f:9000")
    home = checkpoint.home(job_dir, spec, fleets)
    assert isinstance(home, S3Path) and (str(home), home.endpoint_url) == ("s3://fleet/ckpt/jobs/t", "http://f:9000")
    own = spec.model_copy(update={"checkpoint": spec.checkpoint.model_copy(update={"storage": "s3://own"})})
    home = checkpoint.home(job_dir, own, fleets)
    assert isinstance(home, S3Path) and (str(home), home.endpoint_url) == ("s3://own/jobs/t", None)
    assert RunInfo.from_json(fleets.to_json()) == fleets
    assert "checkpoint_storage" not in run.to_json()  # run info written before the field reads the same
