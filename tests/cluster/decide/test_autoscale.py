"""The autoscaler as pure functions: Ray's demand messages in, per-pool targets out, and the
planner sizing pools from them over the simulated cloud."""
from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ray.core.generated import autoscaler_pb2, common_pb2

from rayfleet.cluster.rayio import gcs
from rayfleet.cluster.decide.autoscale import PoolTarget, autoscale_targets, node_shape
from rayfleet.cluster.decide.demand import (Bundle, Demand, Gang, IdleClock, LabelConstraint, NodeUsage, Selector,
                            demand_from_resource_state, resources)
from rayfleet.cluster.loop.observe import observe
from rayfleet.cluster.decide.actions import Launch, Terminate
from rayfleet.cluster.decide.plan import desired_nodes, plan
from rayfleet.cluster.sim.simulator import SimulatedCloud, SimulatedController, SimulatedJob
from rayfleet.cluster.spec.fleet import FleetSpec
from rayfleet.cluster.decide.state import FleetState, NodeRecord, NodeState
from rayfleet.cluster.decide.view import ClusterView
from rayfleet.names import POOL_LABEL

S = NodeState
H100 = {"name": "h100", "accelerator": "H100", "gpus_per_node": 8, "cpus_per_node": 8, "memory": "64Gi",
        "min_nodes": 0, "max_nodes": 4, "autoscale": True, "idle_timeout_s": 60}


def make_spec(*pools: dict, **scaling: object) -> FleetSpec:
    return FleetSpec.model_validate({"name": "t", "pools": list(pools or [H100]),
                                     "scaling": {"loop_period_s": 1, "boot_timeout_s": 120, **scaling}})


def on(pool: str) -> tuple[Selector, ...]:
    return (Selector((LabelConstraint(POOL_LABEL, frozenset({pool})),)),)


def gpu_bundle(gpus: float = 8, cpus: float = 1, pool: str = "h100") -> Bundle:
    return Bundle(resources({"CPU": cpus, "GPU": gpus}), on(pool))


def gang(count: int, strategy: str = "PACK", name: str = "pg1", **bundle: float) -> Gang:
    return Gang(name, (gpu_bundle(**bundle),) * count, strategy)


def ready(number: int, pool: str = "h100", spare: bool = False) -> NodeRecord:
    return NodeRecord(f"t-{pool}-{number:04d}", pool, S.READY, 0.0, node_id=f"{number:056x}", spare=spare,
                      admitted=True)


def idle(number: int, seconds: float, spec: FleetSpec, pool: str = "h100") -> NodeUsage:
    shape = resources(node_shape(spec.pool(pool)))
    return NodeUsage(f"{number:056x}", busy=False, idle_ms=int(seconds * 1000), available=shape)


def busy(number: int) -> NodeUsage:
    return NodeUsage(f"{number:056x}", busy=True, idle_ms=0, available=resources({"CPU": 7}))


def target(spec: FleetSpec, records: list[NodeRecord], demand: Demand | None, pool: str = "h100",
           busy_nodes: frozenset[str] = frozenset(), now: float = 10_000.0) -> PoolTarget:
    return autoscale_targets(spec, {pool: records}, demand, busy_nodes, now)[pool]


# --- reading Ray's messages ----------------------------------------------------------------------
def selector_pb(key: str, values: list[str], operator: int = common_pb2.LABEL_OPERATOR_IN) -> common_pb2.LabelSelector:
    return common_pb2.LabelSelector(label_constraints=[
        common_pb2.LabelSelectorConstraint(label_key=key, operator=operator, label_values=values)])


def test_ray_resource_state_becomes_bundles_gangs_and_node_usage() -> None:
    """The message shape Ray 2.60 sends for a Ray Train gang and pending tasks (seen on a real
    cluster: gangs carry their label selectors in bundle_selectors, the legacy `requests` not)."""
    state = autoscaler_pb2.ClusterResourceState()
    task = state.pending_resource_requests.add(count=2)
    task.request.resources_bundle.update({"CPU": 1.0})
    task.request.label_selectors.append(selector_pb(POOL_LABEL, ["h100"]))
    task.request.label_selectors.append(selector_pb("zone", ["a", "b"], common_pb2.LABEL_OPERATOR_NOT_IN))
    pg = state.pending_gang_resource_requests.add(details="1c44a0e1:STRICT_SPREAD|PENDING")
    for _ in range(3):
        pg.requests.add().resources_bundle.update({"CPU": 1.0, "GPU": 1.0})
    chosen = pg.bundle_selectors.add()
    for _ in range(3):
        request = chosen.resource_requests.add()
        request.resources_bundle.update({"CPU": 1.0, "GPU": 1.0})
        request.label_selectors.append(selector_pb(POOL_LABEL, ["h100"]))
    legacy = state.pending_gang_resource_requests.add(details="")
    request = legacy.requests.add()
    request.resources_bundle.update({"CPU": 2.0})
    request.placement_constraints.add().anti_affinity.label_name = "_PG_x"
    for node_id, status, idle_ms, free_cpu in ((b"\x01", autoscaler_pb2.RUNNING, 0, 0.0),
                                               (b"\x02", autoscaler_pb2.IDLE, 61_000, 1.0),
                                               (b"\x03", autoscaler_pb2.DEAD, 0, 0.0),
                                               (b"\x04", autoscaler_pb2.RUNNING, 0, 1.0)):  # an agent, no work
        node = state.node_states.add(node_id=node_id, status=status, idle_duration_ms=idle_ms)
        node.total_resources.update({"CPU": 1.0, "object_store_memory": 1e8, "node:10.0.0.1": 1.0})
        node.available_resources.update({"CPU": free_cpu, "object_store_memory": 5e7, "node:10.0.0.1": 1.0})

    demand = demand_from_resource_state(state)

    bundle, count = demand.tasks[0]
    assert count == 2 and bundle.resources == (("CPU", 1.0),)
    assert bundle.allowed_on({POOL_LABEL: "h100", "zone": "a"})
    assert bundle.allowed_on({POOL_LABEL: "a100", "zone": "c"})  # the second selector is a fallback
    assert not bundle.allowed_on({POOL_LABEL: "a100", "zone": "b"})
    assert demand.gangs[0].name == "1c44a0e1" and demand.gangs[0].strategy == "STRICT_SPREAD"
    assert demand.gangs[0].bundles == (Bundle((("CPU", 1.0), ("GPU", 1.0)), on("h100")),) * 3
    assert demand.gangs[1].strategy == "STRICT_SPREAD"  # from the anti-affinity constraint
    assert demand.pending_bundles == 2 + 3 + 1
    assert set(demand.nodes) == {"01", "02", "04"}  # the dead node holds nothing
    assert demand.busy_nodes == frozenset({"01"})  # its CPU is taken; objects cached elsewhere do not count
    assert (demand.nodes["02"].busy, demand.nodes["02"].idle_ms) == (False, 61_000)
    assert (demand.nodes["04"].busy, demand.nodes["04"].idle_ms) == (False, 0)  # Ray: RUNNING, our agent


def test_idle_clock_times_nodes_ray_calls_running_only_for_our_agents() -> None:
    clock = IdleClock()
    agent_only = NodeUsage("04", busy=False, idle_ms=0)
    ray_idle = NodeUsage("02", busy=False, idle_ms=61_000)
    working = NodeUsage("01", busy=True, idle_ms=0)
    clock.update(Demand(nodes={"01": working, "02": ray_idle, "04": agent_only}), now=100.0)
    later = clock.update(Demand(nodes={"01": working, "02": ray_idle, "04": agent_only}), now=130.0)
    assert {n: u.idle_ms for n, u in later.nodes.items()} == {"01": 0, "02": 61_000, "04": 30_000}
    clock.update(Demand(nodes={"04": dataclasses.replace(agent_only, busy=True)}), now=140.0)  # work landed
    again = clock.update(Demand(nodes={"04": agent_only}), now=150.0)
    assert again.nodes["04"].idle_ms == 0  # the clock starts over after any work


class FakeGcs:
    """The two calls observe makes of Ray's GCS client, answering with real messages."""

    def __init__(self, state: autoscaler_pb2.ClusterResourceState) -> None:
        self.state = state
        self.drained: list[tuple] = []

    def get_all_node_info(self, timeout: float | None = None) -> dict:
        return {}

    def get_cluster_resource_state(self, timeout_s: float | None = None) -> bytes:
        return autoscaler_pb2.GetClusterResourceStateReply(cluster_resource_state=self.state).SerializeToString()

    def drain_node(self, node_id: object, *args: object, timeout: float | None = None) -> tuple[bool, str]:
        self.drained.append((node_id, *args))
        return True, ""


class NoInstances:
    def instances(self) -> list:
        return []


def two_nodes() -> autoscaler_pb2.ClusterResourceState:
    state = autoscaler_pb2.ClusterResourceState()
    busy_ = state.node_states.add(node_id=b"\x01", status=autoscaler_pb2.RUNNING)
    busy_.total_resources.update({"CPU": 1.0})
    state.node_states.add(node_id=b"\x02", status=autoscaler_pb2.IDLE, idle_duration_ms=90_000)
    return state


def test_observe_counts_nodes_holding_a_placed_gang_as_busy_before_ray_reports_them(monkeypatch) -> None:
    monkeypatch.setattr(gcs, "read_gang_nodes", lambda: frozenset({"02"}))  # the gang just landed on 02
    view = observe(FakeGcs(two_nodes()), NoInstances(), "t", {})
    assert view.demand is not None and not view.demand.nodes["02"].busy  # Ray's report lags
    assert view.busy_nodes == frozenset({"01", "02"})


def test_observe_gives_no_demand_when_placement_groups_cannot_be_read(monkeypatch) -> None:
    def unreadable() -> frozenset[str]:
        raise RuntimeError("GCS restarting")

    monkeypatch.setattr(gcs, "read_gang_nodes", unreadable)
    view = observe(FakeGcs(two_nodes()), NoInstances(), "t", {})
    assert view.demand is None and view.busy_nodes == frozenset()  # the autoscaler holds, removes nothing
    assert view.instances == () and view.ray_nodes == ()


def test_drains_name_the_node_by_its_hex_id() -> None:
    """A binary id reaches the GCS as NIL_ID, which accepts the drain and ignores it."""
    client = FakeGcs(two_nodes())
    gcs.drain(client, "ab" * 28, "idle", deadline_s=30, preemption=False, now_ms=1_000)
    (node_id, *rest), = client.drained
    assert (bytes(node_id, "ascii") if isinstance(node_id, str) else node_id) == b"ab" * 28  # hex, not binary
    assert rest == [autoscaler_pb2.DRAIN_NODE_REASON_IDLE_TERMINATION, "idle", 31_000]


# --- the policy --------------------------------------------------------------------------------
def test_a_gang_bigger_than_the_pool_grows_it_by_what_does_not_fit() -> None:
    spec = make_spec()
    demand = Demand(gangs=(gang(3),), nodes={"1".zfill(56): idle(1, 5, spec)})
    result = target(spec, [ready(1)], demand)
    assert (result.nodes, result.new_nodes, result.pending_bundles, result.unplaced_bundles) == (3, 2, 3, 0)
    assert result.reason == "autoscale: 3 pending bundle(s) (1 gang(s)) need 2 more node(s)"


def test_a_gang_that_cannot_fit_under_max_nodes_launches_nothing() -> None:
    spec = make_spec()
    result = target(spec, [], Demand(gangs=(gang(5),)))
    assert (result.nodes, result.new_nodes, result.unplaced_bundles) == (0, 0, 5)
    assert "do not fit even at max_nodes=4" in result.reason


def test_a_gang_that_cannot_fit_leaves_room_for_one_that_can() -> None:
    result = target(make_spec(), [], Demand(gangs=(gang(5, name="big"), gang(2, name="small"))))
    assert (result.new_nodes, result.unplaced_bundles, result.pending_bundles) == (2, 5, 7)


@pytest.mark.parametrize("strategy, nodes", [("PACK", 1), ("SPREAD", 1), ("STRICT_SPREAD", 4), ("STRICT_PACK", 1)])
def test_placement_strategies_shape_the_node_count(strategy: str, nodes: int) -> None:
    one_gpu = Gang("pg", (gpu_bundle(gpus=1, cpus=1),) * 4, strategy)
    assert target(make_spec(), [], Demand(gangs=(one_gpu,))).new_nodes == nodes


def test_strict_pack_larger_than_one_node_is_unplaceable() -> None:
    result = target(make_spec(), [], Demand(gangs=(gang(2, "STRICT_PACK", gpus=5),)))
    assert (result.new_nodes, result.unplaced_bundles) == (0, 2)


def test_starting_nodes_absorb_pending_demand_so_nothing_is_launched_twice() -> None:
    booting = [NodeRecord(f"t-h100-000{n}", "h100", S.BOOTING, 0.0) for n in (2, 3)]
    result = target(make_spec(), [*booting], Demand(gangs=(gang(2),)))
    assert (result.nodes, result.new_nodes) == (2, 0)


def test_a_joined_node_not_yet_admitted_counts_as_starting() -> None:
    """Nodes join Ray with no CPUs until their health checks pass (admission): Ray shows nothing
    free on them, but the pending gang will land there, so it launches nothing more."""
    spec = make_spec()
    waiting = NodeRecord("t-h100-0002", "h100", S.READY, 0.0, node_id=f"{2:056x}", admitted=False)
    no_cpu = NodeUsage(f"{2:056x}", busy=False, idle_ms=5_000, available=resources({"GPU": 8}))
    result = target(spec, [waiting], Demand(gangs=(gang(1),), nodes={no_cpu.node_id: no_cpu}))
    assert (result.new_nodes, result.removable) == (0, ())


def test_free_resources_of_busy_nodes_are_used_before_new_nodes() -> None:
    spec = make_spec()
    partly = NodeUsage("1".zfill(56), busy=True, idle_ms=0,
                       available=resources({"CPU": 6, "GPU": 4, "memory": 2**30, "accelerator_type:H100": 1}))
    demand = Demand(tasks=((gpu_bundle(gpus=2), 3),), nodes={partly.node_id: partly})
    result = target(spec, [ready(1)], demand)
    assert result.new_nodes == 1  # two of the 2-GPU tasks fit the busy node's 4 free GPUs, one does not


def test_only_nodes_idle_past_the_timeout_and_not_busy_are_removable() -> None:
    spec = make_spec()
    nodes = {u.node_id: u for u in (idle(1, 300, spec), idle(2, 30, spec), busy(3), idle(4, 100, spec))}
    records = [ready(n) for n in (1, 2, 3, 4)]
    result = target(spec, records, Demand(nodes=nodes), busy_nodes=frozenset({f"{4:056x}"}))
    assert result.removable == (("t-h100-0001", 300.0),)  # 2: not long enough; 3 and 4: busy
    assert result.nodes == 3


def test_idle_time_counts_only_since_the_node_joined() -> None:
    """Ray counts idle time from the raylet's start; a node that joined 5 s ago may be about to
    get the work it was launched for (seen on a real fleet: the gang landed, the report lagged)."""
    spec = make_spec()
    joined = NodeRecord("t-h100-0001", "h100", S.READY, since=1000.0, node_id=f"{1:056x}", admitted=True)
    demand = Demand(nodes={f"{1:056x}": idle(1, 300, spec)})
    assert target(spec, [joined], demand, now=1005.0).removable == ()
    assert target(spec, [joined], demand, now=1061.0).removable == (("t-h100-0001", 61.0),)


def test_idle_nodes_are_held_while_placeable_demand_comes_and_goes() -> None:
    """Seen on a real fleet: a gang of 3 asked for 2 more nodes; while they booted Ray Train gave
    up on its placement group and asked again, and in between the one idle node looked spare."""
    controller = autoscaled()
    cloud = controller.cloud
    cloud.advance(100)  # the one node has been idle well past idle_timeout_s (60 s)
    view = dataclasses.replace(cloud.view(), demand=Demand(gangs=(gang(3),), nodes=cloud.demand().nodes))
    result = plan(controller.spec, controller.state, view, cloud.now, controller.targets)
    assert result.state.demand_at["h100"] == cloud.now and not result.autoscale["h100"].removable
    cloud.advance(30)  # the gang withdrawn while its nodes boot
    held = plan(controller.spec, result.state, cloud.view(), cloud.now, controller.targets)
    assert not any(isinstance(a, Terminate) for a in held.actions) and not held.autoscale["h100"].removable
    assert "idle nodes held: demand was pending 30s ago" in held.autoscale["h100"].reason
    cloud.advance(31)  # no demand for longer than the idle timeout: idle nodes may go again
    later = plan(controller.spec, result.state, cloud.view(), cloud.now, controller.targets)
    assert later.autoscale["h100"].removable


def test_an_idle_node_that_pending_work_fits_on_is_kept() -> None:
    spec = make_spec()
    nodes = {u.node_id: u for u in (idle(1, 300, spec), idle(2, 200, spec))}
    result = target(spec, [ready(1), ready(2)], Demand(gangs=(gang(1),), nodes=nodes))
    assert result.removable == (("t-h100-0001", 300.0),) and result.new_nodes == 0  # longest idle goes


def test_unreadable_demand_holds_every_autoscaled_pool() -> None:
    result = target(make_spec(), [ready(1), ready(2)], None)
    assert (result.nodes, result.new_nodes, result.removable) == (2, 0, ())
    assert "could not be read" in result.reason


def test_work_is_homed_by_label_selector_and_resources_and_gpu_free_work_prefers_cpu_pools() -> None:
    cpu = {"name": "cpu", "cpus_per_node": 4, "max_nodes": 4, "autoscale": True}
    a100 = {**H100, "name": "a100", "accelerator": "A100"}
    fixed = {**H100, "name": "fixed", "autoscale": False}
    spec = make_spec(H100, cpu, a100, fixed)
    demand = Demand(tasks=((Bundle(resources({"CPU": 1})), 2),                       # anywhere: the CPU pool
                           (gpu_bundle(gpus=4, pool="a100"), 1),                     # selected: a100
                           (Bundle(resources({"CPU": 1, "GPU": 1})), 1),            # a GPU: first GPU pool
                           (gpu_bundle(pool="fixed"), 1),                            # a pool that does not autoscale
                           (Bundle(resources({"CPU_group_0123": 1})), 5),           # inside a placed group
                           (Bundle(resources({"accelerator_type:A100": 1, "GPU": 1})), 1)))
    targets = autoscale_targets(spec, {}, demand)
    assert set(targets) == {"h100", "cpu", "a100"}
    assert {name: t.new_nodes for name, t in targets.items()} == {"h100": 1, "cpu": 1, "a100": 1}
    assert {name: t.pending_bundles for name, t in targets.items()} == {"h100": 1, "cpu": 2, "a100": 2}


def test_manual_target_is_a_floor_the_autoscaler_only_raises() -> None:
    pool = make_spec({**H100, "min_nodes": 1, "nodes": 2}).pool("h100")
    assert desired_nodes(pool, {}) == 2
    assert desired_nodes(pool, {}, autoscale=0) == 2     # the spec's nodes are the floor
    assert desired_nodes(pool, {}, autoscale=3) == 3
    assert desired_nodes(pool, {"h100": 3}, autoscale=1) == 3  # the manual target too
    assert desired_nodes(pool, {"h100": 1}, autoscale=0) == 1
    assert desired_nodes(pool, {}, autoscale=9) == 4     # never beyond max_nodes


# --- properties --------------------------------------------------------------------------------
shapes = st.sampled_from([{"gpus": 1, "cpus": 1}, {"gpus": 2, "cpus": 2}, {"gpus": 8, "cpus": 1},
                          {"gpus": 4, "cpus": 6}, {"gpus": 0.5, "cpus": 0.5}])
gangs_st = st.lists(st.tuples(st.integers(1, 6), st.sampled_from(["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"]),
                              shapes), max_size=4)
tasks_st = st.lists(st.tuples(shapes, st.integers(1, 20)), max_size=4)
nodes_st = st.lists(st.tuples(st.sampled_from(["ready", "booting", "suspect"]), st.booleans(),
                              st.integers(0, 200)), max_size=6)


def scenario(max_nodes: int, gangs: list, tasks: list, nodes: list) -> tuple[FleetSpec, list[NodeRecord], Demand]:
    spec = make_spec({**H100, "max_nodes": max(max_nodes, len(nodes))})
    records, usage = [], {}
    for number, (state, is_busy, idle_s) in enumerate(nodes, start=1):
        records.append(NodeRecord(f"t-h100-{number:04d}", "h100", S(state), 0.0,
                                  node_id=f"{number:056x}" if state != "booting" else None, admitted=True))
        if state == "ready":
            usage[f"{number:056x}"] = busy(number) if is_busy else idle(number, idle_s, spec)
    demand = Demand(gangs=tuple(Gang(f"g{i}", (gpu_bundle(**shape),) * count, strategy)
                                for i, (count, strategy, shape) in enumerate(gangs)),
                    tasks=tuple((gpu_bundle(**shape), count) for shape, count in tasks), nodes=usage)
    return spec, records, demand


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 8), gangs_st, tasks_st, nodes_st)
def test_targets_respect_bounds_account_for_every_bundle_and_never_remove_busy_nodes(
        max_nodes: int, gangs: list, tasks: list, nodes: list) -> None:
    spec, records, demand = scenario(max_nodes, gangs, tasks, nodes)
    result = target(spec, records, demand)
    pool = spec.pool("h100")
    assert 0 <= result.new_nodes <= max(0, pool.max_nodes - len(records))
    assert result.nodes == len(records) - len(result.removable) + result.new_nodes
    assert result.pending_bundles == demand.pending_bundles
    assert 0 <= result.unplaced_bundles <= result.pending_bundles
    assert result.new_nodes <= result.pending_bundles - result.unplaced_bundles  # no new node stays empty
    if not tasks:  # gangs are all or nothing: what is unplaced is a sum of whole gangs
        sizes = [len(g.bundles) for g in demand.gangs]
        sums = {sum(size for i, size in enumerate(sizes) if mask >> i & 1) for mask in range(1 << len(sizes))}
        assert result.unplaced_bundles in sums
    if not records and not result.unplaced_bundles:  # no node can hold more than its 8 GPUs
        gpus = sum(count * shape["gpus"] for count, _, shape in gangs) + sum(s["gpus"] * c for s, c in tasks)
        assert result.new_nodes >= math.ceil(gpus / 8 - 1e-9)
    by_name = {r.instance: r for r in records}
    for instance, idle_s in result.removable:
        usage = demand.nodes[by_name[instance].node_id]
        assert by_name[instance].state is S.READY and not usage.busy and idle_s >= 60


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 8), gangs_st, tasks_st, nodes_st, tasks_st)
def test_more_demand_never_lowers_the_target(max_nodes: int, gangs: list, tasks: list, nodes: list,
                                             more: list) -> None:
    spec, records, demand = scenario(max_nodes, gangs, tasks, nodes)
    _, _, bigger = scenario(max_nodes, gangs, tasks + more, nodes)
    assert target(spec, records, bigger).nodes >= target(spec, records, demand).nodes


# --- the planner with the policy, over the simulated cloud ---------------------------------------
def autoscaled(**pool: object) -> SimulatedController:
    spec = make_spec({**H100, "min_nodes": 1, **pool}, upscaling_speed=2)
    controller = SimulatedController(spec, SimulatedCloud(boot_s=10))
    controller.run(15)
    return controller


def pool_size(controller: SimulatedController) -> int:
    return sum(r.state is S.READY and not r.spare for r in controller.state.in_pool("h100"))


def test_a_pending_job_grows_the_pool_at_the_upscaling_speed_and_starts() -> None:
    controller = autoscaled()
    job = controller.cloud.submit(SimulatedJob("train", "h100", nodes=4, work_s=100, restart_s=5))
    first = controller.tick()
    assert [a for a in first.actions if isinstance(a, Launch)] == [Launch("h100", "t-h100-0002"),
                                                                    Launch("h100", "t-h100-0003")]
    second = controller.tick()
    assert len([a for a in second.actions if isinstance(a, Launch)]) == 1  # 2 + 1 more: 4 in all
    assert all(e.reason.startswith("autoscale: 4 pending bundle(s)") for e in controller.events[-3:])
    controller.run(30)
    assert pool_size(controller) == 4 and job.started_at is not None
    assert second.autoscale["h100"].nodes == 4


def test_idle_nodes_go_after_the_timeout_never_while_busy_and_the_floor_stays() -> None:
    controller = autoscaled()
    job = controller.cloud.submit(SimulatedJob("train", "h100", nodes=3, work_s=200, restart_s=5))
    controller.run(400, fast=True)
    assert job.finished_at is not None
    scale = [e for e in controller.events if e.kind == "scale"]
    assert len(scale) == 2 and all(e.time >= job.finished_at + 60 for e in scale)
    assert all(e.reason.startswith("idle ") and "floor 1" in e.reason for e in scale)
    assert pool_size(controller) == 1
    assert not [i for i in controller.cloud.interruptions if i[2] == "terminated"]


def test_a_manual_target_keeps_its_nodes_after_the_job() -> None:
    controller = autoscaled()
    controller.targets["h100"] = 2
    controller.cloud.submit(SimulatedJob("train", "h100", nodes=4, work_s=100, restart_s=5))
    controller.run(400, fast=True)
    assert pool_size(controller) == 2
    assert len([e for e in controller.events if e.kind == "scale"]) == 2


def test_without_demand_readings_nothing_is_removed_as_idle() -> None:
    controller = autoscaled()
    controller.cloud.submit(SimulatedJob("train", "h100", nodes=3, work_s=50, restart_s=5))
    controller.run(100)
    assert pool_size(controller) == 3
    controller.cloud.advance(600)  # Ray's clock moves on; the nodes have been idle for 10 minutes
    seen = plan(controller.spec, controller.state, controller.cloud.view(), controller.cloud.now)
    assert len([a for a in seen.actions if isinstance(a, Terminate)]) == 2
    blind = ClusterView(ray_nodes=controller.cloud.ray_nodes(), instances=tuple(controller.cloud.instances()))
    held = plan(controller.spec, controller.state, blind, controller.cloud.now)
    assert not [a for a in held.actions if isinstance(a, Terminate)]
    assert held.autoscale["h100"].nodes == 3


def test_pools_that_do_not_autoscale_ignore_demand() -> None:
    controller = autoscaled(autoscale=False)
    controller.cloud.submit(SimulatedJob("train", "h100", nodes=3))
    controller.run(60)
    assert pool_size(controller) == 1 and controller.state.in_pool("h100")[0].state is S.READY
    assert controller.tick().autoscale == {}


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["submit", "kill", "floor", "wait"]), st.integers(0, 5)), max_size=12))
def test_any_mix_of_jobs_failures_and_floors_settles_within_bounds_without_killing_a_busy_node(
        steps: list[tuple[str, int]]) -> None:
    controller = autoscaled()
    jobs = 0
    for kind, number in steps:
        if kind == "submit":
            jobs += 1
            controller.cloud.submit(SimulatedJob(f"j{jobs}", "h100", nodes=1 + number % 4, work_s=30 + 10 * number,
                                                 restart_s=2))
        elif kind == "kill" and controller.cloud.nodes:
            controller.cloud.kill(sorted(controller.cloud.nodes)[number % len(controller.cloud.nodes)])
        elif kind == "floor":
            controller.targets["h100"] = 1 + number % 4
        controller.run(20)
        members = [r for r in controller.state.in_pool("h100") if r.state.counts_as_capacity]
        assert len(members) <= 4
    controller.run(3600, fast=True)
    floor = desired_nodes(controller.spec.pool("h100"), controller.targets)
    unfinished = [job for job in controller.cloud.jobs if job.finished_at is None]
    assert all(job.nodes > 4 for job in unfinished) or not unfinished  # every job that fits ran to the end
    assert pool_size(controller) == floor  # idle nodes above the floor are gone, the floor stays
    assert not [i for i in controller.cloud.interruptions if i[2] == "terminated"]
