"""Health-driven decisions of the planner, against the simulated cloud: admission, remediation
with hot spares first, rate limits, suspicion before failure, and a starved controller."""
from __future__ import annotations

import dataclasses

from cluster.health.report import Check, Status
from cluster.plan import Admit, Drain, Evict, Launch, Terminate
from cluster.simulate import SimulatedCloud, SimulatedController
from cluster.spec import FleetSpec
from cluster.state import NodeState

XID = Check("gpu.xid", Status.FAIL, "gpu0: XID 79", hardware=True)
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


def test_failing_hardware_check_drains_the_node_and_a_hot_spare_takes_its_place_at_once() -> None:
    controller = fleet(spares=1)
    spare = next(r.instance for r in controller.state.nodes.values() if r.spare)
    controller.cloud.fail_check("t-h100-0002", XID)
    controller.cloud.advance(1)
    result = controller.tick()
    drain = next(a for a in result.actions if isinstance(a, Drain))
    assert (drain.instance, drain.preemption, drain.deadline_s) == ("t-h100-0002", True, 5)
    assert Admit("h100", spare, controller.state.nodes[spare].node_id, 4) in result.actions  # spare first
    assert not any(isinstance(a, Launch) and not controller.state.nodes[a.instance].spare for a in result.actions)
    assert controller.state.nodes["t-h100-0002"].hardware
    controller.run(6)  # the drain deadline passes: evicted and terminated
    assert "t-h100-0002" not in controller.cloud.nodes
    controller.run(10)
    ready = [r for r in controller.state.nodes.values() if r.state is NodeState.READY]
    assert sum(not r.spare and r.admitted for r in ready) == 3 and sum(r.spare for r in ready) == 1
    order = [e.kind for e in controller.events if e.instance in ("t-h100-0002", spare)]
    assert order.index("unhealthy") < order.index("drain") < order.index("replace")
    assert "promote" in order


def test_rate_limit_holds_further_replacements_and_says_why() -> None:
    controller = fleet(max_replacements_per_hour=1, max_unavailable=3)
    for name in ("t-h100-0001", "t-h100-0002"):
        controller.cloud.fail_check(name, XID)
    controller.run(20)
    drained = [e.instance for e in controller.events if e.kind == "drain"]
    assert len(drained) == 1
    held = [r for r in controller.state.nodes.values() if r.state is NodeState.UNHEALTHY]
    assert len(held) == 1 and "max_replacements_per_hour" in held[0].reason
    assert kinds(controller).count("held") == 1  # said once, not every loop


def test_max_unavailable_drains_one_node_at_a_time() -> None:
    controller = fleet(max_unavailable=1)
    for name in ("t-h100-0001", "t-h100-0002"):
        controller.cloud.fail_check(name, XID)
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
    from cluster.plan import plan

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
    assert kinds(controller).count("drain") <= 2
    assert controller.cloud.launches <= 4 + 2
