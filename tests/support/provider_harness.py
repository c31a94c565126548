"""Drive the production reconcile pass (cluster/loop/reconcile.py) over any Provider, with Ray emulated.

The controller's loop is observe -> plan -> act. Here `observe` reads the real provider under test
(EC2 through moto, KubeRay through the fake API server) and synthesises Ray's node table from it:
an instance the provider reports RUNNING "joins Ray" `join_delay_s` after it was first seen
running, labelled with its instance name as a real node would be. A test can mark a node dead in
Ray (a crashed raylet, a failed health check) and watch the planner replace it. `plan` and `act`
are the production functions, unchanged.

Time is the wall clock plus a skew the test may add (`skip`), so the planner's own timers (the
30 s relaunch of a lost request) can be crossed without waiting.
"""
from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from rayfleet.cluster.loop.act import act
from rayfleet.cluster.decide.events import Event
from rayfleet.cluster.decide.plan import Launch, Plan, QuarantineRequests, Terminate
from rayfleet.cluster.loop.reconcile import UsageMeter, reconcile
from rayfleet.cluster.loop.store import FleetStore
from rayfleet.cluster.providers import Provider
from rayfleet.cluster.spec.fleet import FleetSpec
from rayfleet.cluster.decide.state import FleetState, NodeState
from rayfleet.cluster.decide.view import ClusterView, Instance, InstanceStatus, RayNode
from rayfleet.cluster.sim.kv import MemoryKV
from rayfleet.names import FLEET_LABEL, INSTANCE_LABEL, POOL_LABEL
from tests.support.fleet_state import ready_count


@dataclass
class DrainRecorder:
    """Stands in for the GCS client `act` drains through: records what was drained."""

    drained: list[str] = field(default_factory=list)

    def drain_node(self, node_id: str | bytes, reason: int, message: str, deadline_ms: int,
                   timeout: float | None = None) -> tuple[bool, str]:
        # Ray's GCS client takes the node id in hex (a binary id reaches the GCS as NIL_ID)
        self.drained.append(node_id.decode() if isinstance(node_id, bytes) else node_id)
        return True, ""


@dataclass
class EmulatedRay:
    """Ray's node table as the controller would read it, derived from the provider's instances."""

    join_delay_s: float = 0.0
    first_running: dict[str, float] = field(default_factory=dict)
    pools: dict[str, str] = field(default_factory=dict)
    dead: dict[str, str] = field(default_factory=dict)     # instance -> death reason

    def node_id(self, instance: str) -> str:
        return hashlib.sha224(instance.encode()).hexdigest()  # 56 hex digits, like Ray's

    def mark_dead(self, instance: str, reason: str = "health check failed") -> None:
        self.dead[instance] = reason

    def nodes(self, fleet: str, instances: tuple[Instance, ...], now: float) -> tuple[RayNode, ...]:
        for instance in instances:
            if instance.status is InstanceStatus.RUNNING:
                self.first_running.setdefault(instance.id, now)
                self.pools[instance.id] = instance.pool
            elif instance.status is InstanceStatus.TERMINATED and instance.id in self.first_running:
                self.dead.setdefault(instance.id, instance.detail or "instance terminated")
        listed = {instance.id for instance in instances}
        nodes = []
        for name, since in self.first_running.items():
            if now - since < self.join_delay_s:
                continue
            if name not in listed:  # the machine is gone; Ray keeps the dead node in its table
                self.dead.setdefault(name, "node stopped sending heartbeats")
            alive = name not in self.dead
            nodes.append(RayNode(node_id=self.node_id(name), instance=name, pool=self.pools[name], alive=alive,
                                 address="10.0.0.2", death_reason=self.dead.get(name, ""),
                                 labels={FLEET_LABEL: fleet, POOL_LABEL: self.pools[name], INSTANCE_LABEL: name}))
        return tuple(nodes)


@dataclass
class ProviderHarness:
    """One controller: its remembered state, its manual targets, and the loop over `provider`."""

    spec: FleetSpec
    provider: Provider
    ray: EmulatedRay = field(default_factory=EmulatedRay)
    state: FleetState = field(default_factory=FleetState)
    targets: dict[str, int] = field(default_factory=dict)
    skew: float = 0.0
    events: list[Event] = field(default_factory=list)
    actions: list[Any] = field(default_factory=list)
    drains: DrainRecorder = field(default_factory=DrainRecorder)
    launch_errors: dict[str, str] = field(default_factory=dict)
    requests: QuarantineRequests = field(default_factory=QuarantineRequests)
    usage: UsageMeter = field(default_factory=UsageMeter)
    kv: MemoryKV = field(default_factory=MemoryKV)  # the GCS KV store the state is persisted to
    store: FleetStore = field(init=False)

    def __post_init__(self) -> None:
        self.store = FleetStore(self.kv)

    def now(self) -> float:
        return time.time() + self.skew

    def skip(self, seconds: float) -> None:
        """Let the planner's timers run `seconds` ahead of the wall clock."""
        self.skew += seconds

    def view(self) -> ClusterView:
        try:
            instances: tuple[Instance, ...] | None = tuple(self.provider.instances())
        except Exception:  # as cluster.observe: an unreadable provider is None, never "all gone"
            instances = None
        ray = self.ray.nodes(self.spec.name, instances, self.now()) if instances is not None else None
        return ClusterView(ray_nodes=ray, instances=instances, launch_errors=dict(self.launch_errors))

    def tick(self) -> Plan:
        """One observe -> plan -> persist -> act pass, as the controller runs it (reconcile)."""
        return reconcile(self, self.view(), self.now())

    def persist(self, result: Plan) -> None:
        self.store.put_state(result.state)
        self.events.extend(result.events)

    def apply(self, actions: Sequence[Any]) -> None:
        self.actions.extend(actions)
        self.launch_errors = act(actions, self.provider, self.spec, self.drains)

    def run_until(self, predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> None:
        """Tick until `predicate()` holds after a pass; fail naming `what` at the deadline."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.tick()
            if predicate():
                return
            time.sleep(interval)  # the loop's period, not a synchronisation
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; "
                             f"state: {[(r.instance, r.state.value, r.reason) for r in self.state.nodes.values()]}")

    # --- what tests ask ---------------------------------------------------------------------
    def ready(self, pool: str) -> int:
        return ready_count(self.state, pool)

    def records(self, pool: str, state: NodeState) -> list[str]:
        return sorted(r.instance for r in self.state.in_pool(pool) if r.state is state)

    def launched(self) -> list[str]:
        return [a.instance for a in self.actions if isinstance(a, Launch)]

    def terminated(self) -> list[str]:
        return [a.instance for a in self.actions if isinstance(a, Terminate)]

    def settled(self) -> bool:
        """Every pool at its desired size, all ready, nothing starting or going."""
        from rayfleet.cluster.decide.plan import desired_nodes

        starting = any(r.state is not NodeState.READY for r in self.state.nodes.values())
        return not starting and all(self.ready(p.name) == desired_nodes(p, self.targets) for p in self.spec.pools)

    def restarted(self, provider: Provider, keep_state: bool = False) -> ProviderHarness:
        """The controller after a crash: a new provider object; its state read back from the
        store it persisted to, or lost."""
        kv = self.kv if keep_state else MemoryKV()
        fresh = dataclasses.replace(self, provider=provider, state=FleetState(), events=[], actions=[],
                                    drains=DrainRecorder(), launch_errors={}, usage=UsageMeter(), kv=kv)
        fresh.state = fresh.store.state()
        return fresh
