"""`rayfleet explain` answers, built from what the real planner recorded in situations the
simulator creates (the same plan() the controller runs), and the fleet's GPU-hours by state."""
from __future__ import annotations

import dataclasses

import pytest

from rayfleet.cluster.decide.autoscale import pending_report
from rayfleet.cluster.decide.explain import explain_job, explain_node, explain_pool
from rayfleet.cluster.health.report import Check, Status
from rayfleet.cluster.decide.plan import plan
from rayfleet.cluster.sim.simulator import SimulatedCloud, SimulatedController, SimulatedJob
from rayfleet.cluster.spec.fleet import FleetSpec
from rayfleet.cluster.loop.status import fleet_status, health_document
from rayfleet.cluster.decide.usage import USAGE_STATES

XID = Check("gpu.xid", Status.FAIL, "gpu0: XID 79 (fell off the bus)", value=79, hardware=True)


def spec(**pool: object) -> FleetSpec:
    return FleetSpec.model_validate({
        "name": "t", "pools": [{"name": "h100", "accelerator": "H100", "gpus_per_node": 8, "cpus_per_node": 8,
                                "min_nodes": 0, "max_nodes": 2, "nodes": 2, **pool},
                               {"name": "cpu", "cpus_per_node": 4, "min_nodes": 0, "max_nodes": 4, "nodes": 0}],
        "health": {"heartbeat_timeout_s": 3, "confirm_window_s": 20},
        "scaling": {"loop_period_s": 1, "autoscale": True, "idle_timeout_s": 600}})


def status_of(c: SimulatedController) -> dict:
    view = c.cloud.view()
    result = plan(c.spec, c.state, view, c.cloud.now, c.targets, c.requests)
    status = fleet_status(c.spec, result.state, c.targets, c.cloud.now, {}, result.autoscale)
    status["pending"] = pending_report(c.spec, view.demand)
    status["pool_failures"] = {p: {"count": n, "last": t} for p, (n, t) in result.state.pool_failures.items()}
    return status


def events(c: SimulatedController) -> list[dict]:
    return [e.to_json() for e in c.events]


def test_a_pool_at_max_and_the_job_it_cannot_hold_are_explained() -> None:
    c = SimulatedController(spec(), SimulatedCloud(boot_s=3))
    c.run(10)
    c.cloud.submit(SimulatedJob("big", "h100", nodes=4))  # a gang of 4 whole nodes; the pool stops at 2
    c.run(10)
    status = status_of(c)
    pool = explain_pool("h100", status, events(c), c.cloud.now)
    assert any("at max_nodes=2" in line for line in pool["answer"]), pool["answer"]
    assert any("autoscaler" in line and "do not fit even at max_nodes=2" in line for line in pool["answer"])
    job = explain_job("big", {"state": "PENDING", "pool": "h100", "workers": 4}, status,
                      {"CPU": 8, "GPU": 8}, [])
    text = "\n".join(job["answer"])
    assert "pending: 4 bundle(s) of {CPU: 8, GPU: 8" in text, text
    assert "pool cpu: a bundle does not fit its node shape {CPU: 4" in text or \
        "pool cpu: its labels do not match" in text, text
    assert "could run on: h100" in text
    # the answer for a pool that has what it asked for says so
    assert "nothing holds it back" in explain_pool("cpu", status, events(c), c.cloud.now)["answer"][-1]


def test_launch_failures_and_their_backoff_are_explained() -> None:
    c = SimulatedController(spec(nodes=2), SimulatedCloud(boot_s=3))
    errors = {}
    for _ in range(3):  # every launch fails: the pool backs off
        view = dataclasses.replace(c.cloud.view(), launch_errors=errors)
        result = plan(c.spec, c.state, view, c.cloud.now, c.targets)
        c.state = result.state
        c.events.extend(result.events)
        errors = {a.instance: "InsufficientInstanceCapacity: no p5 in us-east-1a" for a in result.actions
                  if type(a).__name__ == "Launch"}
        c.cloud.advance(1)
    status = status_of(c)
    answer = explain_pool("h100", status, events(c), c.cloud.now)["answer"]
    text = "\n".join(answer)
    assert "launch failure(s) in a row; backing off" in text, text
    assert "InsufficientInstanceCapacity" in text


def test_a_quarantined_node_is_explained_with_its_check_and_value() -> None:
    c = SimulatedController(spec(hot_spares=1), SimulatedCloud(boot_s=3))
    c.run(15)
    c.cloud.fail_check("t-h100-0001", XID)
    c.run(3)
    status = status_of(c)
    node = next(n for n in status["nodes"] if n["instance"] == "t-h100-0001")
    health = next(n for n in health_document(c.state, c.cloud.reports, {}, c.cloud.now)["nodes"]
                  if n["instance"] == "t-h100-0001")
    answer = explain_node("t-h100-0001", node, health, events(c))["answer"]
    text = "\n".join(answer)
    assert answer[0].startswith("node t-h100-0001 (h100): quarantined"), text
    assert "quarantine: t-h100-0001 quarantined" in text and "XID 79" in text
    assert "check gpu.xid: fail: gpu0: XID 79 (fell off the bus) (value 79" in text
    # a healthy node has nothing to explain
    calm = explain_node("t-h100-0002", next(n for n in status["nodes"] if n["instance"] == "t-h100-0002"), None,
                        events(c))["answer"]
    assert "no decision recorded" in calm[-1] or any(line.startswith("admitted") for line in calm)


def test_gpu_hours_split_by_state_and_add_up_to_the_fleet_s_gpus_over_time() -> None:
    c = SimulatedController(spec(hot_spares=1, max_nodes=3), SimulatedCloud(boot_s=30))
    c.cloud.submit(SimulatedJob("one", "h100", nodes=1))
    c.run(3600)
    hours = c.gpu_hours()
    pool = hours["h100"]
    assert set(pool) == set(USAGE_STATES)
    assert pool["booting"] > 0 and pool["spare"] == pytest.approx(8.0, rel=0.05)   # one spare, all hour
    assert pool["training"] == pytest.approx(8.0, rel=0.05) and pool["idle"] == pytest.approx(8.0, rel=0.05)
    assert sum(pool.values()) == pytest.approx(c.cloud.gpu_seconds / 3600, rel=0.02)
