"""Demand-based autoscaling against real Ray, driven through the CLI: a Ray Train job whose gang
needs more nodes than the pool has grows the pool and runs; afterwards idle nodes are drained
and removed after the idle timeout, down to the floor (a manual target, then min_nodes).
Tests run in order on one fleet."""
from __future__ import annotations

from typing import Any, Iterator

import pytest

from tests.support.fleet import Fleet, running_fleet
from tests.support.fleet_jobs import history, job_curve, submit, wait_for_job
from tests.support.specs import h100_pool, job_spec
from tests.conftest import wait_until

pytestmark = pytest.mark.ray

IDLE_S = 8.0
LOOP_S = 0.5
POOLS = [h100_pool(cpus_per_node=1, memory="4Gi", min_nodes=1, max_nodes=3, autoscale=True, idle_timeout_s=IDLE_S)]
JOB = job_spec("gang", workers=3, resources={"cpus": 1}, data={"seq_len": 32, "global_batch": 3},
               optimizer={"warmup_steps": 2}, steps=30, checkpoint={"every": 30})


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    yield from running_fleet(tmp_path_factory.mktemp("autoscale"), "t-auto", POOLS,
                             scaling={"loop_period_s": LOOP_S})


@pytest.fixture(scope="module")
def run() -> dict[str, Any]:
    """What the first test saw, for the ones after it."""
    return {}


def h100(fleet: Fleet) -> dict[str, Any]:
    return fleet.pools()["h100"]


def training_window(fleet: Fleet, name: str) -> tuple[float, float]:
    """(time of the last training step, time the job recorded its end): its workers were busy
    until the first and gone by the second (Ray's own end_time comes later, after the driver)."""
    finished = next(e["time"] for e in history(fleet, name) if e["event"] == "finished")
    return max(m["time"] for m in job_curve(fleet, name)), finished


def scale_events(fleet: Fleet) -> list[dict[str, Any]]:
    return [e for e in fleet.events() if e["kind"] == "scale" and e["pool"] == "h100"]


def live_nodes(fleet: Fleet) -> set[str]:
    return {n["instance"] for n in fleet.status()["nodes"] if n["state"] == "ready"}


def loops_pass(fleet: Fleet, seconds: float) -> None:
    """Wait until the controller has planned for `seconds` more (its loop count, not a sleep)."""
    start = fleet.status()["controller"]["loops"]
    wait_until(lambda: fleet.status()["controller"]["loops"] >= start + seconds / LOOP_S, seconds * 4 + 30,
               f"{seconds:.0f}s of controller loops")


def test_a_job_needing_more_nodes_than_the_pool_has_grows_it_and_runs(fleet: Fleet, run: dict) -> None:
    status = fleet.wait_ready()
    pool = {p["name"]: p for p in status["pools"]}["h100"]
    assert (pool["ready"], pool["floor"], pool["autoscale"], pool["pending_bundles"]) == (1, 1, True, 0)
    submit(fleet, JOB)
    # Ray Train asks for a gang of 3 one-node bundles; the autoscaler sees it pending and grows.
    seen = wait_until(lambda: (p := h100(fleet))["autoscale_target"] == 3 and p["desired"] == 3 and p, 120,
                      "the autoscaler to ask for 3 nodes")
    assert seen["floor"] == 1
    wait_until(lambda: h100(fleet)["ready"] == 3, 120, "the pool to grow to 3 ready nodes")
    run["nodes"] = live_nodes(fleet)
    launches = [e for e in fleet.events() if e["kind"] == "launch" and e["pool"] == "h100"]
    grown = [e for e in launches if e["reason"].startswith("autoscale:")]
    assert len(launches) == 3 and len(grown) == 2, launches
    assert "gang" in grown[0]["reason"] and "need 2 more node(s)" in grown[0]["reason"]
    # A manual target while the job runs: a floor under the autoscaler, changing nothing now.
    assert fleet.cli("scale", "h100", "--nodes", "2").returncode == 0
    done = wait_for_job(fleet, "gang", ("SUCCEEDED", "FAILED"), timeout=300)
    assert done["status"] == "SUCCEEDED" and done["step"] == JOB["steps"], done
    run["last_step"], finished = training_window(fleet, "gang")
    assert not [e for e in scale_events(fleet) if e["time"] < finished], "a node was removed while it trained"


def test_idle_nodes_are_drained_and_removed_after_the_timeout_down_to_the_manual_floor(
        fleet: Fleet, run: dict) -> None:
    wait_until(lambda: (p := h100(fleet))["ready"] == 2 and p["draining"] == 0, 120,
               "one idle node removed, down to the manual floor of 2")
    removed = scale_events(fleet)
    assert len(removed) == 1, removed
    assert "removed, drain requested first" in removed[0]["message"]  # Ray was asked to drain it
    reason = removed[0]["reason"]
    assert reason.startswith("idle ") and "idle_timeout 8s" in reason and "floor 2" in reason, reason
    assert float(reason.split()[1].rstrip("s")) >= IDLE_S  # idle as long as the timeout, by Ray's clock
    assert removed[0]["time"] >= run["last_step"] + IDLE_S  # busy until the last step, then idle the timeout
    loops_pass(fleet, IDLE_S * 2)  # longer than the timeout: the floor holds
    assert h100(fleet)["ready"] == 2 and len(scale_events(fleet)) == 1
    assert live_nodes(fleet) < run["nodes"] and removed[0]["instance"] in run["nodes"]


def test_lowering_the_manual_floor_lets_idle_nodes_go_down_to_min_nodes(fleet: Fleet) -> None:
    assert fleet.cli("scale", "h100", "--nodes", "1").returncode == 0
    wait_until(lambda: (p := h100(fleet))["ready"] == 1 and p["draining"] == 0, 120,
               "the pool down to min_nodes")
    removed = scale_events(fleet)
    assert len(removed) == 2 and "floor 1" in removed[1]["reason"], removed
    loops_pass(fleet, IDLE_S * 2)
    pool = h100(fleet)
    assert (pool["ready"], pool["desired"], pool["floor"]) == (1, 1, 1)
    assert pool["autoscale_target"] == 0  # the last node is idle too: min_nodes alone keeps it
    assert len(scale_events(fleet)) == 2
