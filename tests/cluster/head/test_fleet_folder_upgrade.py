"""A fleet folder written by the previous release keeps working after an upgrade.

tests/support/data/fleet-folder-0.1.0 is `~/.rayfleet` as rayfleet 0.1.0 (before the code became
the one `rayfleet` package) left it after `up`, a 6-step job checkpointed at step 6, and `down`:
the fleet's spec, token, runtime and supervisor records, and the job's history and checkpoint.
Only the Ray logs were left out, and the supervisor's recorded environment was emptied.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from tests.conftest import ROOT
from tests.support.fleet import Fleet, tear_down

pytestmark = pytest.mark.ray

FOLDER = ROOT / "tests" / "support" / "data" / "fleet-folder-0.1.0"
JOB = {"name": "before-upgrade", "pool": "cpu", "workers": 1, "resources": {"cpus": 1},
       "model": {"preset": "tiny"}, "data": {"seq_len": 64, "global_batch": 4},
       "optimizer": {"warmup_steps": 2}, "checkpoint": {"every": 3}}


@pytest.fixture
def upgraded(tmp_path: Path) -> Iterator[Fleet]:
    home = tmp_path / "home"
    shutil.copytree(FOLDER, home)
    fleet = Fleet(name="upgraded", home=home, spec_path=home / "fleets" / "upgraded" / "fleet.yaml")
    try:
        yield fleet
    finally:
        tear_down(fleet)


def history(fleet: Fleet) -> list[dict[str, Any]]:
    path = fleet.dir / "storage" / "jobs" / JOB["name"] / "history.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_fleet_folder_of_the_previous_release_comes_up_and_its_job_continues(upgraded: Fleet,
                                                                                tmp_path: Path) -> None:
    result = upgraded.cli("up", "-f", str(upgraded.spec_path))
    assert result.returncode == 0, result.stdout + result.stderr

    listed = upgraded.cli("jobs", "--all", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    rows = {row["job"]: row for row in json.loads(listed.stdout)}
    assert rows[JOB["name"]]["status"] == "SUCCEEDED" and rows[JOB["name"]]["step"] == 6, rows

    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({**JOB, "steps": 9}))
    result = upgraded.cli("submit", "-f", str(job), "--follow")
    assert result.returncode == 0, result.stdout + result.stderr

    started = [e for e in history(upgraded) if e["event"] == "started"]
    assert started[-1]["from_step"] == 6, started
    assert max(e["step"] for e in history(upgraded) if e["event"] == "step") == 9
