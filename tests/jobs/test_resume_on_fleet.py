"""Jobs that lose a node or change their world size on a real local fleet: a node killed mid-run
resumes from its checkpoint; a job on prepared token shards stopped on 2 workers resumes on 1 and
sees exactly the batches the uninterrupted order names."""
from __future__ import annotations

import json
import math
import signal
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from tests.support.fleet import Fleet, running_fleet
from tests.support.fleet_jobs import (JOBS_POOLS, history, job_curve, job_file, jobs, run_curve, small_job,
                                      started_events, train_workers, wait_for_job)
from tests.support.fleet_processes import instance_of, node_raylet
from tests.conftest import wait_until

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    yield from running_fleet(tmp_path_factory.mktemp("resume"), "t-resume", JOBS_POOLS)


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
