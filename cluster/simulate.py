"""A simulated cloud and Ray cluster: deterministic clock, launch latency, node deaths.

It implements the provider interface and produces ClusterViews, so the production `plan` runs
against it unchanged: unit tests drive it step by step, and the fleet-scale benchmark drives
thousands of nodes through it. Time only moves when `advance` is called.
"""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from cluster.health.report import Check, HealthReport
from cluster.plan import Admit, Drain, Launch, Plan, QuarantineRequests, RunChecks, Terminate, Unadmit, plan
from cluster.spec import FleetSpec, PoolSpec
from cluster.state import FleetState
from cluster.view import INSTANCE_LABEL, POOL_LABEL, ClusterView, Instance, InstanceStatus, Probe, RayNode


@dataclass
class SimulatedNode:
    name: str
    pool: str
    launched_at: float
    ready_at: float                 # when its raylet registers with Ray
    status: InstanceStatus = InstanceStatus.PENDING
    node_id: str | None = None
    ray_alive: bool = False
    detail: str = ""
    draining: bool = False
    hung: bool = False                                   # silent agent, raylet health check unanswered
    failing: tuple[Check, ...] = ()                      # checks its agent reports as failing
    admitted: bool = False
    notice_deadline: float | None = None


@dataclass
class SimulatedCloud:
    """Provider + Ray in one deterministic model."""

    now: float = 0.0
    boot_s: float = 10.0             # launch to Ray-joined
    boot_jitter_s: float = 0.0
    boot_failure_rate: float = 0.0   # share of launches that never come up
    seed: int = 0
    nodes: dict[str, SimulatedNode] = field(default_factory=dict)
    reports: dict[str, HealthReport] = field(default_factory=dict)
    launches: int = 0                # provider launch calls that created a machine
    joins: int = 0                   # Ray nodes registered (also numbers their node ids)
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    # --- the provider interface ---------------------------------------------------------------
    def launch(self, pool: PoolSpec, names: Sequence[str]) -> list[Instance]:
        for name in names:
            if name in self.nodes and self.nodes[name].status is not InstanceStatus.TERMINATED:
                continue  # idempotent: the name is a client token
            jitter = self.rng.uniform(0, self.boot_jitter_s) if self.boot_jitter_s else 0.0
            node = SimulatedNode(name, pool.name, self.now, self.now + self.boot_s + jitter)
            if self.boot_failure_rate and self.rng.random() < self.boot_failure_rate:
                node.ready_at = float("inf")
            self.nodes[name] = node
            self.launches += 1
        return [self._instance(self.nodes[name]) for name in names]

    def terminate(self, names: Sequence[str], wait: bool = False) -> None:
        for name in names:
            node = self.nodes.pop(name, None)
            self.reports.pop(name, None)
            if node is not None:
                node.ray_alive = False

    def instances(self) -> list[Instance]:
        return [self._instance(node) for node in self.nodes.values()]

    # --- Ray's side ---------------------------------------------------------------------------
    def ray_nodes(self) -> tuple[RayNode, ...]:
        return tuple(
            RayNode(node_id=node.node_id, instance=node.name, pool=node.pool, alive=node.ray_alive,
                    address="10.0.0.1", draining=node.draining,
                    labels={POOL_LABEL: node.pool, INSTANCE_LABEL: node.name})
            for node in self.nodes.values() if node.node_id is not None)

    def view(self, launch_errors: Mapping[str, str] | None = None) -> ClusterView:
        return ClusterView(ray_nodes=self.ray_nodes(), instances=tuple(self.instances()),
                           launch_errors=dict(launch_errors or {}), health=self.reports, probes=self.probes())

    def probes(self) -> dict[str, Probe]:
        """What the raylet health check of each joined node answers (the controller probes them)."""
        return {node.name: Probe.HUNG if node.hung else Probe.OK if node.ray_alive else Probe.GONE
                for node in self.nodes.values() if node.node_id is not None}

    # --- the world moving ---------------------------------------------------------------------
    def advance(self, seconds: float) -> None:
        """Move time on: machines boot and join Ray; every joined node's agent reports, unless hung."""
        self.now += seconds
        for node in self.nodes.values():
            if node.status is InstanceStatus.PENDING and self.now >= node.launched_at + 1.0:
                node.status = InstanceStatus.RUNNING
            if node.status is InstanceStatus.RUNNING and node.node_id is None and self.now >= node.ready_at:
                self.joins += 1
                node.node_id = f"{self.joins:056x}"
                node.ray_alive = True
            if node.ray_alive and not node.hung:
                self.reports[node.name] = HealthReport(node.name, node.node_id or "", self.now, node.failing,
                                                       received_at=self.now, notice_deadline=node.notice_deadline,
                                                       notice_reason="simulated notice" if node.notice_deadline else "")

    def kill(self, name: str, detail: str = "killed") -> None:
        """The machine dies: the provider reports it terminated, Ray loses it."""
        node = self.nodes[name]
        node.status = InstanceStatus.TERMINATED
        node.ray_alive = False
        node.detail = detail

    def kill_raylet(self, name: str) -> None:
        """Ray loses the node but the machine stays up (a crashed raylet)."""
        self.nodes[name].ray_alive = False

    def hang(self, name: str, hung: bool = True) -> None:
        """The node stops answering (agent silent, raylet health check times out) or comes back."""
        self.nodes[name].hung = hung

    def notice(self, name: str, deadline: float) -> None:
        """The provider announces the node goes away at `deadline` (a spot interruption)."""
        self.nodes[name].notice_deadline = deadline

    def fail_check(self, name: str, check: Check | None) -> None:
        """Its agent reports this failing check from now on (None: healthy again)."""
        self.nodes[name].failing = (check,) if check else ()

    def apply(self, actions: Sequence[object]) -> None:
        for action in actions:
            if isinstance(action, Drain) and action.instance in self.nodes:
                self.nodes[action.instance].draining = True
            if isinstance(action, Admit) and action.instance in self.nodes:
                self.nodes[action.instance].admitted = True
            if isinstance(action, Unadmit) and action.instance in self.nodes:
                self.nodes[action.instance].admitted = False
            if isinstance(action, RunChecks) and action.instance in self.nodes:
                node = self.nodes[action.instance]
                self.reports[node.name] = HealthReport(node.name, node.node_id or "", self.now, node.failing,
                                                       received_at=self.now)
        self.terminate([a.instance for a in actions if isinstance(a, Terminate)])
        for action in actions:
            if isinstance(action, Launch):
                self.launch(PoolSpec(name=action.pool), [action.instance])

    def _instance(self, node: SimulatedNode) -> Instance:
        return Instance(id=node.name, pool=node.pool, status=node.status, launched_at=node.launched_at,
                        detail=node.detail)


@dataclass
class SimulatedController:
    """The production loop (observe -> plan -> act) over a SimulatedCloud."""

    spec: FleetSpec
    cloud: SimulatedCloud
    state: FleetState = field(default_factory=FleetState)
    targets: dict[str, int] = field(default_factory=dict)
    events: list[object] = field(default_factory=list)
    requests: QuarantineRequests = field(default_factory=QuarantineRequests)

    def tick(self) -> Plan:
        result = plan(self.spec, self.state, self.cloud.view(), self.cloud.now, self.targets, self.requests)
        self.state = result.state
        self.events.extend(result.events)
        self.cloud.apply(result.actions)
        return result

    def run(self, seconds: float, period: float | None = None) -> None:
        period = period or self.spec.scaling.loop_period_s
        end = self.cloud.now + seconds
        while self.cloud.now < end:
            self.tick()
            self.cloud.advance(period)

    def restarted(self) -> SimulatedController:
        """The same controller after a crash that lost its memory (state comes back empty)."""
        return dataclasses.replace(self, state=FleetState(), events=[])
