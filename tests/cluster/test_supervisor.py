"""The head supervisor's start policy, with real processes standing in for `ray start`: a head that
exits before its node registers is started again, and a first start that keeps failing is given up
with the head's own last words, which `rayfleet up` reports."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from cluster.errors import Failed
from cluster.supervisor import CONFIG, HEAD_START_ATTEMPTS, RETRY_BACKOFF_S, Supervisor
from tests.conftest import wait_until


def supervisor_for(tmp_path: Path, head_command: list[str]) -> Supervisor:
    (tmp_path / "logs").mkdir()
    (tmp_path / CONFIG).write_text(json.dumps({
        "fleet": "t", "fault_tolerant": False, "gcs_address": "127.0.0.1:9", "dashboard_url": "http://127.0.0.1:9",
        "head_temp_dir": str(tmp_path / "ray"), "head_command": head_command, "head_env": {}}))
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
    from cluster import head as head_module
    from cluster.fleetdir import FleetDir
    from cluster.spec import FleetSpec

    monkeypatch.setenv("RAYFLEET_HOME", str(tmp_path / "home"))
    failing = [sys.executable, "-c", "print('raylet: no room at the inn'); exit(1)"]
    monkeypatch.setattr(head_module, "head_command", lambda *args: failing)
    spec = FleetSpec.model_validate({"name": "t-gave-up", "pools": [{"name": "p", "nodes": 1}]})
    fleet = FleetDir(spec.name)
    with pytest.raises(Failed, match="failed to start 3 times; the last said: raylet: no room at the inn"):
        head_module.start_head(spec, fleet)
    assert fleet.read_head() is None  # stopped and forgotten: the next `up` starts clean
