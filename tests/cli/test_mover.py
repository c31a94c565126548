"""The federation mover's life as a process (rayfleet/cli/mover.py): one per federation, adopted
by a second start, stopped by pid, and gone on its own once the federation is down. What it
decides is tested in tests/cluster/decide/test_federation.py; what it does, on real cells, in
tests/cluster/head/test_federation_fleet.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from rayfleet.cli.mover import LOCK, MODULE, mover_process, start_mover, stop_mover
from rayfleet.cluster.head.fleetdir import FleetDir
from rayfleet.cluster.head.processes import stop_tree
from rayfleet.cluster.head.supervisor import ALREADY_RUNNING
from tests.conftest import wait_until


@pytest.fixture
def federation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FleetDir]:
    monkeypatch.setenv("RAYFLEET_HOME", str(tmp_path))
    fleet = FleetDir("fed", home=tmp_path)
    fleet.ensure()
    (fleet.path / "federation.json").write_text(json.dumps(
        {"fleet": "fed", "cells": [{"name": "c1", "fleet": "fed-c1"}, {"name": "c2", "fleet": "fed-c2"}]}))
    try:
        yield fleet
    finally:
        owned = mover_process(fleet.path)
        if owned is not None:  # the test failed halfway: stop the mover it started, by its pid
            stop_tree(owned, grace_s=5.0, include_descendants=False)


def test_one_mover_per_federation_adopted_by_a_second_start_and_stopped_by_pid(federation: FleetDir) -> None:
    mover = start_mover(federation)
    assert mover_process(federation.path) == mover
    assert start_mover(federation) == mover  # `up` again: the running one
    second = subprocess.run([sys.executable, "-m", MODULE, str(federation.path)], timeout=60,
                            env={**os.environ, "RAYFLEET_HOME": str(federation.home)})
    assert second.returncode == ALREADY_RUNNING
    assert mover_process(federation.path) == mover
    stop_mover(federation)
    assert not mover.alive() and mover_process(federation.path) is None
    stop_mover(federation)  # again: nothing to stop


def test_a_mover_exits_on_its_own_once_the_federation_is_down(federation: FleetDir) -> None:
    mover = start_mover(federation)
    (federation.path / "federation.json").unlink()  # what `down` does after stopping the cells
    wait_until(lambda: not mover.alive(), 30, "the mover to exit")
    assert "federation is down" in (federation.logs_dir / "mover.log").read_text()


def test_a_pid_in_the_lock_that_is_not_a_mover_is_not_ours(federation: FleetDir) -> None:
    (federation.path / LOCK).write_text(f"{os.getpid()}\n")  # this test process: no mover of this folder
    assert mover_process(federation.path) is None
    stop_mover(federation)  # and so nothing is signalled
