"""Health-driven decisions of the planner, against the simulated cloud: admission, remediation
with hot spares first, rate limits, suspicion before failure, and a starved controller."""
from __future__ import annotations

import dataclasses

from rayfleet.cluster.health.report import Check, Status
from rayfleet.cluster.decide.actions import Admit, Drain, Evict, Launch, RunChecks, Terminate, Unadmit, Vacate
from rayfleet.cluster.decide.plan import QuarantineRequests
from rayfleet.cluster.sim.simulator import SimulatedCloud, SimulatedController
from rayfleet.cluster.spec.fleet import FleetSpec
from rayfleet.cluster.decide.state import NodeState

XID = Check("gpu.xid", Status.FAIL, "gpu0: XID 79", hardware=True)
DISK = Check("disk", Status.FAIL, "98% of / used")  # a failure, but not of the hardware
HOT = Check("gpu.temperature", Status.WARN, "gpu0: 92 C", 92.0, 87.0)


def spec(spares: int = 0, nodes: int = 3, **health: object) -> FleetSpec:
    return FleetSpec.model_validate({
        "name": "t", "pools": [{"name": "h100", "accelerator": "H100", "gpus_per_node": 8, "cpus_per_node": 4,
                                "min_nodes": 0, "max_nodes": 8, "nodes": nodes, "hot_spares": spares,
                                "max_unavailable": health.pop("max_unavailable", 1)}],
        "health": {"heartbeat_timeout_s": 3, "confirm_window_s": 20, "drain_deadline_s": 5, **health},
        "scaling": {"loop_period_s": 1}})


def fleet(**kwargs: object) -> SimulatedController:
    controller = SimulatedController(spec(**kwargs), SimulatedCloud(boot_s=3))
    controller.run(15)
    return controller


def states(controller: SimulatedController) -> dict[str, str]:
    return {name: r.state.value + (" spare" if r.spare else "") for name, r in controller.state.nodes.items()}


def kinds(controller: SimulatedController) -> list[str]:
    return [e.kind for e in controller.events]


def test_nodes_are_admitted_only_after_their_agent_reported_and_spares_never() -> None:
    controller = SimulatedController(spec(spares=1), SimulatedCloud(boot_s=3))
    admits: list[Admit] = []
    for _ in range(15):
        admits += [a for a in controller.tick().actions if isinstance(a, Admit)]
        controller.cloud.advance(1)
    assert sorted(a.instance for a in admits) == ["t-h100-0001", "t-h100-0002", "t-h100-0003"]
    assert all(a.cpus == 4 for a in admits)
    spare = next(r for r in controller.state.nodes.values() if r.spare)
    assert spare.state is NodeState.READY and not spare.admitted


def test_failing_hardware_check_quarantines_the_node_and_a_hot_spare_takes_its_place_at_once() -> None:
    controller = fleet(spares=1)
    spare = next(r.instance for r in controller.state.nodes.values() if r.spare)
    controller.cloud.fail_check("t-h100-0002", XID)
    controller.cloud.advance(1)
    result = controller.tick()
    node_id = controller.state.nodes["t-h100-0002"].node_id
    assert Unadmit("h100", "t-h100-0002", node_id) in result.actions  # no new work lands
    assert any(isinstance(a, Vacate) and a.instance == "t-h100-0002" for a in result.actions)  # jobs move
    assert not any(isinstance(a, (Drain, Terminate)) for a in result.actions)  # kept for diagnosis
    assert Admit("h100", spare, controller.state.nodes[spare].node_id, 4) in result.actions  # spare first
    record = controller.state.nodes["t-h100-0002"]
    assert record.state is NodeState.QUARANTINED and record.hardware and not record.admitted
    controller.run(20)
    assert "t-h100-0002" in controller.cloud.nodes  # still there
    ready = [r for r in controller.state.nodes.values() if r.state is NodeState.READY]
    assert sum(not r.spare and r.admitted for r in ready) == 3 and sum(r.spare for r in ready) == 1


def test_a_released_node_comes_back_only_after_its_checks_pass() -> None:
    controller = fleet()
    controller.cloud.fail_check("t-h100-0001", XID)
    controller.run(3)
    assert controller.state.nodes["t-h100-0001"].state is NodeState.QUARANTINED
    controller.requests = QuarantineRequests(release={"t-h100-0001": controller.cloud.now})
    result = controller.tick()
    assert RunChecks("h100", "t-h100-0001") in result.actions
    controller.run(3)  # its checks still fail: refused
    assert controller.state.nodes["t-h100-0001"].state is NodeState.QUARANTINED
    assert "release refused" in controller.state.nodes["t-h100-0001"].reason
    controller.cloud.fail_check("t-h100-0001", None)
    controller.requests = QuarantineRequests(release={"t-h100-0001": controller.cloud.now})
    controller.run(4)
    record = controller.state.nodes["t-h100-0001"]
    assert record.state is NodeState.READY and "release" in kinds(controller)


def test_quarantine_keeps_at_most_max_quarantined_per_pool_and_honours_terminate_requests() -> None:
    controller = fleet(nodes=4, max_quarantined=1, max_replacements_per_hour=10)
    controller.cloud.fail_check("t-h100-0001", XID)
    controller.run(3)
    controller.cloud.fail_check("t-h100-0002", XID)
    controller.run(3)
    quarantined = [n for n, r in controller.state.nodes.items() if r.state is NodeState.QUARANTINED]
    assert quarantined == ["t-h100-0002"] and "t-h100-0001" not in controller.cloud.nodes  # the oldest went
    controller.requests = QuarantineRequests(terminate=frozenset({"t-h100-0002"}))
    controller.run(3)
    assert "t-h100-0002" not in controller.cloud.nodes


def test_a_notice_replaces_the_node_before_it_goes_and_ends_it_once_its_jobs_checkpointed() -> None:
    controller = fleet(spares=1)
    spare = next(r.instance for r in controller.state.nodes.values() if r.spare)
    node = controller.state.nodes["t-h100-0003"]
    controller.cloud.notice("t-h100-0003", controller.cloud.now + 30)
    controller.cloud.advance(1)
    result = controller.tick()
    drain = next(a for a in result.actions if isinstance(a, Drain))
    assert drain.instance == "t-h100-0003" and drain.preemption and 28 <= drain.deadline_s <= 30
    assert any(isinstance(a, Admit) and a.instance == spare for a in result.actions)  # replaced before it goes
    assert controller.state.nodes["t-h100-0003"].state is NodeState.DRAINING
    controller.cloud.advance(1)
    assert not any(isinstance(a, Terminate) for a in controller.tick().actions)  # its job has not acked yet
    view = dataclasses.replace(controller.cloud.view(), notice_acks=frozenset({node.node_id}))
    from rayfleet.cluster.decide.plan import plan

    ended = plan(controller.spec, controller.state, view, controller.cloud.now)
    evict = next(a for a in ended.actions if isinstance(a, Evict))
    assert evict.instance == "t-h100-0003" and evict.preempted  # Ray Train charges its preemption budget


def test_rate_limit_holds_further_replacements_and_says_why() -> None:
    controller = fleet(max_replacements_per_hour=1, max_unavailable=3)
    for name in ("t-h100-0001", "t-h100-0002"):
        controller.cloud.fail_check(name, XID)
    controller.run(20)
    remediated = [e.instance for e in controller.events if e.kind in ("drain", "quarantine")]
    assert len(remediated) == 1
    held = [r for r in controller.state.nodes.values() if r.state is NodeState.UNHEALTHY]
    assert len(held) == 1 and "max_replacements_per_hour" in held[0].reason
    assert kinds(controller).count("held") == 1  # said once, not every loop


def test_max_unavailable_drains_one_node_at_a_time() -> None:
    controller = fleet(max_unavailable=1)
    for name in ("t-h100-0001", "t-h100-0002"):
        controller.cloud.fail_check(name, DISK)
    controller.cloud.advance(1)
    controller.tick()
    assert sorted(r.state.value for r in controller.state.nodes.values() if r.instance in ("t-h100-0001", "t-h100-0002")) \
        == ["draining", "unhealthy"]
    controller.run(30)
    assert [e.kind for e in controller.events].count("replace") == 2  # the second went after the first


def test_a_degraded_node_is_kept_and_recovers() -> None:
    controller = fleet()
    controller.cloud.fail_check("t-h100-0001", HOT)
    controller.run(5)
    assert controller.state.nodes["t-h100-0001"].state is NodeState.DEGRADED
    assert not any(k in kinds(controller) for k in ("drain", "replace", "lost"))
    controller.cloud.fail_check("t-h100-0001", None)
    controller.run(3)
    assert controller.state.nodes["t-h100-0001"].state is NodeState.READY
    assert "recovered" in kinds(controller)


def test_a_silent_node_is_suspect_and_survives_a_pause_shorter_than_the_confirm_window() -> None:
    controller = fleet()
    controller.cloud.hang("t-h100-0003")
    controller.run(15)
    assert controller.state.nodes["t-h100-0003"].state is NodeState.SUSPECT
    controller.cloud.hang("t-h100-0003", False)
    controller.run(3)
    assert controller.state.nodes["t-h100-0003"].state is NodeState.READY
    assert not any(isinstance(a, Terminate) for a in controller.tick().actions)
    assert controller.cloud.launches == 3


def test_a_node_silent_past_the_confirm_window_is_declared_dead_and_replaced() -> None:
    controller = fleet()
    controller.cloud.hang("t-h100-0003")
    controller.run(40)
    lost = [e for e in controller.events if e.kind == "lost"]
    assert len(lost) == 1 and "unresponsive for" in lost[0].message
    suspected = next(e.time for e in controller.events if e.kind == "suspect")
    assert lost[0].time - suspected >= 20  # the confirm window
    assert controller.cloud.launches == 4


def test_a_gone_raylet_is_failed_at_once_without_waiting_for_silence() -> None:
    controller = fleet()
    controller.cloud.kill_raylet("t-h100-0002")  # the probe is refused
    result = controller.tick()
    assert any(isinstance(a, Evict) and a.instance == "t-h100-0002" for a in result.actions)


def test_a_starved_controller_does_not_blame_the_nodes_for_its_own_silence() -> None:
    controller = fleet()
    quiet = controller.cloud.now
    controller.cloud.now += 10  # the controller was paused 10 s: every report looks 10 s old
    view = dataclasses.replace(controller.cloud.view(), quiet_until=quiet + 10)
    from rayfleet.cluster.decide.plan import plan

    result = plan(controller.spec, controller.state, view, controller.cloud.now)
    assert all(r.state is NodeState.READY for r in result.state.nodes.values())
    blind = plan(controller.spec, controller.state, controller.cloud.view(), controller.cloud.now)
    assert any(r.state is NodeState.SUSPECT for r in blind.state.nodes.values())  # what it would do otherwise


def test_a_flapping_check_does_not_cause_a_replacement_storm() -> None:
    controller = fleet(nodes=4, max_replacements_per_hour=2, max_unavailable=4)
    for second in range(120):  # every node's check flips every 3 s for two minutes
        for name in list(controller.cloud.nodes):
            controller.cloud.fail_check(name, XID if (second // 3) % 2 else None)
        controller.run(1)
    assert kinds(controller).count("drain") + kinds(controller).count("quarantine") <= 2
    assert controller.cloud.launches <= 4 + 2
