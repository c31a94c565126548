"""The planner against the simulated cloud: sizing, replacement, restarts, idempotency."""
from __future__ import annotations

import dataclasses

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from rayfleet.cluster.decide.actions import Admit, Drain, Evict, Launch, Terminate
from rayfleet.cluster.decide.plan import desired_nodes, plan
from rayfleet.cluster.decide.retries import RELAUNCH_AFTER_S
from rayfleet.cluster.sim.simulator import SimulatedCloud, SimulatedController
from rayfleet.cluster.spec.fleet import FleetSpec
from rayfleet.cluster.decide.state import FleetState, IllegalTransition, NodeRecord, NodeState
from rayfleet.cluster.decide.view import ClusterView, Instance, InstanceStatus


def make_spec(**pools: dict) -> FleetSpec:
    base = {"h100": {"accelerator": "H100", "gpus_per_node": 8, "min_nodes": 1, "max_nodes": 6, "nodes": 2},
            "a100": {"accelerator": "A100", "gpus_per_node": 8, "min_nodes": 0, "max_nodes": 3, "nodes": 1}}
    base.update(pools)
    return FleetSpec.model_validate({"name": "t", "pools": [{"name": k, **v} for k, v in base.items()],
                                     "scaling": {"loop_period_s": 1, "boot_timeout_s": 60}})


def ready(controller: SimulatedController, pool: str) -> int:
    return sum(r.state is NodeState.READY and not r.spare for r in controller.state.in_pool(pool))


def settle(controller: SimulatedController, seconds: float = 30) -> None:
    controller.run(seconds)


def test_fresh_fleet_launches_each_pool_to_size_then_stays_still() -> None:
    controller = SimulatedController(make_spec(), SimulatedCloud(boot_s=5))
    first = controller.tick()
    launched = [a for a in first.actions if isinstance(a, Launch)]
    assert sorted(a.pool for a in launched) == ["a100", "h100", "h100"]
    settle(controller)
    assert (ready(controller, "h100"), ready(controller, "a100")) == (2, 1)
    quiet = controller.tick()
    assert quiet.actions == () and quiet.events == ()
    assert controller.cloud.launches == 3


def test_manual_target_wins_over_spec_and_is_clamped_to_bounds() -> None:
    spec = make_spec()
    pool = spec.pool("h100")
    assert desired_nodes(pool, {}) == 2
    assert desired_nodes(pool, {"h100": 4}) == 4
    assert desired_nodes(pool, {"h100": 99}) == 6
    assert desired_nodes(pool, {"h100": 0}) == 1
    controller = SimulatedController(spec, SimulatedCloud(boot_s=5), targets={"h100": 4})
    settle(controller)
    assert ready(controller, "h100") == 4
    assert any(e.reason == "manual target 4" for e in controller.events)


def test_scale_down_removes_unstarted_nodes_first_and_drains_ready_ones() -> None:
    controller = SimulatedController(make_spec(), SimulatedCloud(boot_s=5), targets={"h100": 3})
    settle(controller)
    controller.targets["h100"] = 5
    controller.tick()  # two more requested, not started
    controller.targets["h100"] = 2
    result = controller.tick()
    terminated = [a.instance for a in result.actions if isinstance(a, Terminate)]
    assert terminated == ["t-h100-0005", "t-h100-0004", "t-h100-0003"]
    drained = [a.instance for a in result.actions if isinstance(a, Drain)]
    assert drained == ["t-h100-0003"]  # the one ready node removed is drained first
    settle(controller)
    assert ready(controller, "h100") == 2 and len(controller.cloud.nodes) == 3


def test_dead_instance_is_replaced_in_the_same_pass_with_its_reason() -> None:
    controller = SimulatedController(make_spec(), SimulatedCloud(boot_s=5))
    settle(controller)
    controller.cloud.kill("t-h100-0001", detail="raylet exited with -9 (signal 9)")
    result = controller.tick()
    assert Terminate("h100", "t-h100-0001", "instance gone: raylet exited with -9 (signal 9)") in result.actions
    assert any(isinstance(a, Evict) and a.instance == "t-h100-0001" for a in result.actions)  # jobs fail over now
    assert Launch("h100", "t-h100-0003") in result.actions
    lost = [e for e in result.events if e.kind == "lost"]
    assert lost and "signal 9" in lost[0].message
    settle(controller)
    assert ready(controller, "h100") == 2
    assert "t-h100-0001" not in controller.state.nodes


def test_node_ray_declares_dead_is_replaced_even_while_its_machine_runs() -> None:
    controller = SimulatedController(make_spec(), SimulatedCloud(boot_s=5))
    settle(controller)
    controller.cloud.kill_raylet("t-a100-0001")
    result = controller.tick()
    assert any(isinstance(a, Terminate) and a.instance == "t-a100-0001" for a in result.actions)
    assert any(isinstance(a, Launch) and a.pool == "a100" for a in result.actions)


def test_node_that_never_joins_is_replaced_after_boot_timeout_with_backoff() -> None:
    cloud = SimulatedCloud(boot_s=5, boot_failure_rate=1.0)
    controller = SimulatedController(make_spec(a100={"nodes": 0, "max_nodes": 1}), cloud)
    controller.run(200)
    failed = [e.time for e in controller.events if e.kind == "failed"]
    launched = [e.time for e in controller.events if e.kind == "launch"]
    assert "did not join Ray within 60s" in next(e.message for e in controller.events if e.kind == "failed")
    waits = sorted({min(t for t in launched if t > f) - f for f in failed if any(t > f for t in launched)})
    assert waits == [1.0, 2.0, 4.0], waits  # each failed round waits twice as long before relaunching
    assert cloud.launches == 8  # 4 rounds of the 2 h100 nodes


def test_launch_errors_back_off_exponentially_per_pool() -> None:
    spec = make_spec(a100={"nodes": 0})
    cloud = SimulatedCloud(boot_s=5)
    state, now, errors = FleetState(), 0.0, {}
    launch_times = []
    while now < 40:
        result = plan(spec, state, dataclasses.replace(cloud.view(), launch_errors=errors), now)
        launches = [a for a in result.actions if isinstance(a, Launch)]
        if launches:
            launch_times.append(now)
        # every launch fails; the controller feeds the errors into the next observation
        errors = {a.instance: "launch failed: InsufficientInstanceCapacity" for a in launches}
        state, now = result.state, now + 0.5
    gaps = [b - a for a, b in zip(launch_times, launch_times[1:])]
    assert gaps == sorted(gaps) and gaps[-1] >= 4 * gaps[0], gaps  # waits grow exponentially
    assert state.pool_failures["h100"][0] == len(launch_times)  # one step per failed batch of 2


def test_restarted_controller_adopts_running_instances_and_launches_nothing() -> None:
    controller = SimulatedController(make_spec(), SimulatedCloud(boot_s=5))
    settle(controller)
    launches = controller.cloud.launches
    fresh = controller.restarted()
    fresh.run(10)
    assert fresh.cloud.launches == launches
    assert (ready(fresh, "h100"), ready(fresh, "a100")) == (2, 1)
    assert sum(e.kind == "adopt" for e in fresh.events) == 3
    fresh.targets["h100"] = 3
    fresh.tick()
    assert "t-h100-0003" in fresh.state.nodes  # numbering continues after adopted names


def test_crash_between_recording_and_launching_relaunches_the_same_name_once() -> None:
    spec = make_spec(a100={"nodes": 0})
    cloud = SimulatedCloud(boot_s=5)
    decided = plan(spec, FleetState(), cloud.view(), now=0.0)
    # The controller persisted `decided.state` and crashed before acting: the cloud has nothing.
    state, now = decided.state, 0.0
    while now < RELAUNCH_AFTER_S + 5:
        now += 1.0
        result = plan(spec, state, cloud.view(), now)
        cloud.apply(result.actions)
        cloud.advance(1.0)
        state = result.state
    names = sorted(cloud.nodes)
    assert names == ["t-h100-0001", "t-h100-0002"]
    assert cloud.launches == 2
    assert all(r.launch_attempts == 2 for r in state.nodes.values())


def test_unreadable_provider_or_gcs_never_fails_nodes() -> None:
    controller = SimulatedController(make_spec(), SimulatedCloud(boot_s=5))
    settle(controller)
    blind = ClusterView(ray_nodes=None, instances=None)
    result = plan(controller.spec, controller.state, blind, controller.cloud.now)
    assert result.actions == ()
    assert all(r.state is NodeState.READY for r in result.state.nodes.values())


def test_instances_of_a_pool_removed_from_the_spec_are_terminated() -> None:
    controller = SimulatedController(make_spec(), SimulatedCloud(boot_s=5))
    settle(controller)
    smaller = FleetSpec.model_validate({**controller.spec.model_dump(), "pools": [controller.spec.pool("h100").model_dump()]})
    restarted = SimulatedController(smaller, controller.cloud)
    restarted.run(5)
    assert "t-a100-0001" not in controller.cloud.nodes
    assert any(e.kind == "terminate" and "left the spec" in e.message for e in restarted.events)


def test_hot_spares_are_kept_beside_the_pool_and_not_counted_in_it() -> None:
    controller = SimulatedController(make_spec(h100={"accelerator": "H100", "gpus_per_node": 8,
                                                     "min_nodes": 1, "max_nodes": 6, "nodes": 2, "hot_spares": 1}),
                                     SimulatedCloud(boot_s=5))
    settle(controller)
    spares = [r for r in controller.state.in_pool("h100") if r.spare]
    assert len(spares) == 1 and spares[0].state is NodeState.READY
    assert ready(controller, "h100") == 2


def test_transitions_are_checked() -> None:
    record = NodeRecord("n", "p", NodeState.REQUESTED, 0.0)
    with pytest.raises(IllegalTransition):
        record.to(NodeState.DRAINING, 1.0, "no")
    assert record.to(NodeState.BOOTING, 1.0, "up").state is NodeState.BOOTING


def test_state_round_trips_through_json() -> None:
    controller = SimulatedController(make_spec(), SimulatedCloud(boot_s=5))
    settle(controller)
    assert FleetState.from_json(controller.state.to_json()) == controller.state


@settings(max_examples=40, deadline=None)
@example([("kill", 0), ("kill", 1), ("kill", 0), ("kill", 0), ("kill", 1), ("raylet", 0)])
@given(st.lists(st.tuples(st.sampled_from(["kill", "raylet", "target", "wait"]),
                          st.integers(min_value=0, max_value=7)), max_size=25))
def test_any_sequence_of_faults_and_targets_converges_to_the_desired_fleet(steps: list[tuple[str, int]]) -> None:
    spec = make_spec(h100={"accelerator": "H100", "gpus_per_node": 8, "min_nodes": 1, "max_nodes": 6,
                           "nodes": 2, "hot_spares": 1})
    controller = SimulatedController(spec, SimulatedCloud(boot_s=3))
    for kind, number in steps:
        names = sorted(controller.cloud.nodes)
        if kind == "kill" and names:
            controller.cloud.kill(names[number % len(names)])
        elif kind == "raylet" and names:
            controller.cloud.kill_raylet(names[number % len(names)])
        elif kind == "target":
            controller.targets["h100"] = number
        controller.run(2)
        for pool in spec.pools:  # never more capacity than max_nodes (+ spares) at any moment
            members = [r for r in controller.state.in_pool(pool.name) if r.state.counts_as_capacity]
            assert len(members) <= pool.max_nodes + pool.hot_spares
    # A node whose raylet died while it booted is replaced only after boot_timeout_s, so the
    # fleet is whole again within that plus a launch's boot and back-off.
    controller.run(spec.scaling.boot_timeout_s + 60)
    for pool in spec.pools:
        assert ready(controller, pool.name) == desired_nodes(pool, controller.targets)
    machines = len(controller.cloud.nodes)
    assert machines == sum(desired_nodes(p, controller.targets) + p.hot_spares for p in spec.pools)


def test_instances_named_by_the_provider_fulfil_pending_requests_of_their_pool() -> None:
    """KubeRay names pods itself: a pod of the pool answers the oldest request, not an extra node."""
    spec = make_spec(a100={"nodes": 0})
    first = plan(spec, FleetState(), ClusterView(ray_nodes=(), instances=()), now=0.0)
    assert sorted(first.state.nodes) == ["t-h100-0001", "t-h100-0002"]
    pods = (Instance("t-head-h100-worker-x7k2p", "h100", InstanceStatus.RUNNING, 0.5),)
    second = plan(spec, first.state, ClusterView(ray_nodes=(), instances=pods), now=1.0)
    assert sorted(second.state.nodes) == ["t-h100-0002", "t-head-h100-worker-x7k2p"]
    assert not any(isinstance(a, Launch) for a in second.actions)
