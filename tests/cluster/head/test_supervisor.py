"""The head supervisor's start policy, with real processes standing in for `ray start`: a head that
exits before its node registers is started again, and a first start that keeps failing is given up
with the head's own last words, which `rayfleet up` reports."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rayfleet.errors import Failed
from rayfleet.cluster.head.processes import Owned, stop_tree
from rayfleet.cluster.head.supervisor import ALREADY_RUNNING, CONFIG, HEAD_START_ATTEMPTS, RETRY_BACKOFF_S, Supervisor, \
    supervisor_process
from tests.conftest import ROOT, wait_until
from tests.support.specs import fleet_spec


def write_config(fleet_dir: Path, head_command: list[str]) -> None:
    (fleet_dir / "logs").mkdir(parents=True, exist_ok=True)
    (fleet_dir / CONFIG).write_text(json.dumps({
        "fleet": "t", "fault_tolerant": False, "gcs_address": "127.0.0.1:9", "dashboard_url": "http://127.0.0.1:9",
        "head_temp_dir": str(fleet_dir / "ray"), "head_command": head_command, "head_env_set": {}}))


WAITING_HEAD = [sys.executable, "-c", "import time; time.sleep(600)"]  # a head that never registers


def supervisor_command(fleet_dir: Path) -> list[str]:
    """The supervisor as `up` starts it, for a folder whose head is WAITING_HEAD."""
    write_config(fleet_dir, WAITING_HEAD)
    return [sys.executable, "-m", "rayfleet.cluster.head.supervisor", str(fleet_dir)]


def head_of(fleet_dir: Path) -> Owned:
    """The head the running supervisor started, once its state names it."""
    state = wait_until(lambda: json.loads((fleet_dir / "supervisor.json").read_text()), 30, "the supervisor's state")
    return Owned.from_json(state["head"]["owned"])


def supervisor_for(tmp_path: Path, head_command: list[str]) -> Supervisor:
    write_config(tmp_path, head_command)
    return Supervisor(tmp_path)


def test_a_head_that_never_registers_is_tried_three_times_then_given_up_with_its_last_words(tmp_path: Path) -> None:
    failing = [sys.executable, "-c", "print('Exception: The current node timed out during startup.'); exit(1)"]
    sup = supervisor_for(tmp_path, failing)
    wait_until(lambda: sup.step() or sup.gave_up, 30, "the supervisor to give up")
    kinds = [event["kind"] for event in sup.events]
    assert kinds == ["head-started", *["head-start-failed", "head-started"] * (HEAD_START_ATTEMPTS - 1), "head-failed"]
    assert sup.head.starts == HEAD_START_ATTEMPTS
    starts = [event["time"] for event in sup.events if event["kind"] == "head-started"]
    assert starts[2] - starts[1] >= RETRY_BACKOFF_S[1] > 0  # no tight loop of starts
    state = json.loads((tmp_path / "supervisor.json").read_text())["head"]
    assert "timed out during startup" in state["gave_up"] and state["restarts"] == 0
    sup.step()  # given up means given up: no fourth start
    assert sup.head.starts == HEAD_START_ATTEMPTS


def test_up_reports_a_head_the_supervisor_gave_up_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rayfleet.cluster.head import head as head_module
    from rayfleet.cluster.head.fleetdir import FleetDir

    monkeypatch.setenv("RAYFLEET_HOME", str(tmp_path / "home"))
    failing = [sys.executable, "-c", "print('raylet: no room at the inn'); exit(1)"]
    monkeypatch.setattr(head_module, "head_command", lambda *args: failing)
    spec = fleet_spec({"name": "p", "nodes": 1}, name="t-gave-up")
    fleet = FleetDir(spec.name)
    with pytest.raises(Failed, match="failed to start 3 times; the last said: raylet: no room at the inn"):
        head_module.start_head(spec, fleet)
    assert fleet.read_head() is None  # stopped and forgotten: the next `up` starts clean


def test_a_second_supervisor_for_the_same_fleet_exits_at_once_and_the_first_keeps_its_head(tmp_path: Path) -> None:
    """Two `up`s, or an `up` after one that was killed, must never leave two supervisors, each with a
    head of its own, of which `down` would stop one."""
    command = supervisor_command(tmp_path)
    first = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.DEVNULL)
    head: Owned | None = None
    try:
        head = head_of(tmp_path)
        second = subprocess.run(command, cwd=ROOT, stdin=subprocess.DEVNULL, timeout=60, check=False)
        assert second.returncode == ALREADY_RUNNING
        assert "another supervisor (pid %d)" % first.pid in (tmp_path / "logs" / "supervisor.log").read_text()
        owned = supervisor_process(tmp_path)
        assert owned is not None and owned.pid == first.pid
        heads = [e for e in json.loads((tmp_path / "supervisor.json").read_text())["events"]
                 if e["kind"] == "head-started"]
        assert len(heads) == 1 and head.alive()
    finally:
        first.terminate()
        first.wait(timeout=30)
        if head is not None:
            stop_tree(head, grace_s=2.0)
    assert supervisor_process(tmp_path) is None  # a dead supervisor's lock file names no one


def test_a_supervisor_whose_fleet_folder_is_removed_stops_its_head_and_exits(tmp_path: Path) -> None:
    """Seen when a fleet's folder went while its head ran (a test's temp folder cleaned by another
    pytest session): the supervisor kept the head running with no record, token or command left
    to reach it. Now it stops what it started and exits."""
    import shutil

    fleet_dir = tmp_path / "fleet"
    supervisor = subprocess.Popen(supervisor_command(fleet_dir), cwd=ROOT, stdin=subprocess.DEVNULL)
    head: Owned | None = None
    try:
        head = head_of(fleet_dir)
        assert head.alive()
        shutil.rmtree(fleet_dir)
        assert supervisor.wait(timeout=60) == 0
        wait_until(lambda: not head.alive(), 30, "the head to be stopped")
        assert not fleet_dir.exists()  # it wrote nothing more: no folder made again for a state file
    finally:
        if supervisor.poll() is None:
            supervisor.terminate()
            supervisor.wait(timeout=30)
        if head is not None and head.alive():
            stop_tree(head, grace_s=2.0)
