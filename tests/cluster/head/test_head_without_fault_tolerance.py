"""A head without fault tolerance, with real Ray: a head lost after it ran is reported clearly and
`down` cleans up; a head that exits while it starts is started again and `up` waits for it; an
`up` killed while its head starts leaves a supervisor that the next `up` waits for, not a second."""
from __future__ import annotations

import signal
from typing import Iterator

import psutil
import pytest

from tests.support.fleet import Fleet, running_fleet, supervisor
from tests.support.fleet_processes import kill_tree, raylets, supervisors
from tests.support.specs import h100_pool
from tests.conftest import start_rayfleet, wait_until

pytestmark = pytest.mark.ray

POOLS = [h100_pool(cpus_per_node=1, memory="8Gi", min_nodes=1, max_nodes=4, nodes=1)]


@pytest.fixture(scope="module")
def fragile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    yield from running_fleet(tmp_path_factory.mktemp("noft"), "t-noft", POOLS)


def test_without_fault_tolerance_a_lost_head_is_reported_and_down_leaves_nothing(fragile: Fleet) -> None:
    fragile.wait_ready()
    ours = fragile.owned_processes()
    kill_tree(fragile.head_record()["pid"])
    wait_until(lambda: supervisor(fragile)["head"]["lost_at"] is not None, 60, "the supervisor to notice")
    status = fragile.cli("status")
    assert status.returncode != 0 and "fault tolerance is off" in status.stderr
    up = fragile.cli("up", "-f", str(fragile.spec_path))
    assert up.returncode == 1 and "rayfleet down" in up.stderr
    assert fragile.cli("down").returncode == 0
    assert not any(p.alive() for p in ours)
    assert not raylets(fragile)
    assert fragile.cli("up", "-f", str(fragile.spec_path)).returncode == 0  # a clean start again
    listed = fragile.cli("jobs", "--all", "-o", "json")
    assert listed.returncode == 0


def test_a_head_that_exits_while_starting_is_started_again_and_up_succeeds(fragile: Fleet) -> None:
    """`ray start` exits when the raylet misses its fixed 30 s registration wait on a loaded machine;
    a head killed before its node registered stands in for that here."""
    assert fragile.cli("down").returncode == 0
    up = start_rayfleet("up", "-f", str(fragile.spec_path), home=fragile.home)
    try:
        head_file = fragile.dir / "head.json"
        first = wait_until(lambda: head_file.exists() and fragile.head_record(), 60, "a first head")
        kill_tree(first["pid"], signal.SIGSTOP)  # frozen before its node can register ...
        state = wait_until(lambda: (fragile.dir / "supervisor.json").exists() and supervisor(fragile), 30,
                           "the supervisor's state")
        assert state["head"]["node_id"] is None
        kill_tree(first["pid"])  # ... then gone: a failed start, not a lost cluster
        out, err = up.communicate(timeout=600)
    finally:
        if up.poll() is None:
            up.kill()
    assert up.returncode == 0, out + err
    kinds = [event["kind"] for event in supervisor(fragile)["events"]]
    assert kinds[:3] == ["head-started", "head-start-failed", "head-started"], kinds
    head = fragile.head_record()
    assert head["pid"] != first["pid"] and psutil.pid_exists(head["pid"])
    assert fragile.wait_ready()["head"]["restarts"] == 0  # a failed start is not a recovery


def test_an_up_killed_while_its_head_starts_is_finished_by_the_next_up_with_one_supervisor(fragile: Fleet) -> None:
    """Then the supervisor is lost too: `status` and `up` say so, and `down` still stops everything."""
    assert fragile.cli("down").returncode == 0
    first = start_rayfleet("up", "-f", str(fragile.spec_path), home=fragile.home)
    try:
        started = wait_until(lambda: supervisors(fragile), 60, "the first up's supervisor")
        first.kill()  # Ctrl-C, a closed terminal, an OOM kill: its supervisor and head carry on
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    again = fragile.cli("up", "-f", str(fragile.spec_path))
    assert again.returncode == 0, again.stdout + again.stderr
    assert supervisors(fragile) == started  # the first one's head was waited for, no second was started
    ours = fragile.owned_processes()
    fragile.wait_ready()

    psutil.Process(started[0]).kill()  # the supervisor alone, not its head: a supervisor gone (say, a `down` interrupted after stopping it) is reported ...
    wait_until(lambda: not supervisors(fragile), 30, "the supervisor to exit")
    assert "supervisor is not running" in fragile.status()["head"]["message"]
    reapplied = fragile.cli("up", "-f", str(fragile.spec_path))
    assert reapplied.returncode == 0 and "supervisor is not running" in " ".join(reapplied.stdout.split())
    assert fragile.cli("down").returncode == 0  # ... and `down` still stops everything
    assert supervisors(fragile) == [] and not any(p.alive() for p in ours) and not raylets(fragile)
