"""What the controller observes, as plain values: Ray's nodes and the provider's instances.

Building these values is the only place that talks to Ray or a provider (`cluster/loop/observe.py`);
`plan` only ever sees them. A source that could not be read is `None`, never an empty tuple: a
failed provider call must not look like a fleet whose every instance vanished.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Mapping

from rayfleet.cluster.decide.demand import Demand
from rayfleet.cluster.health.report import HealthReport


class Probe(str, Enum):
    """The raylet's answer to a gRPC health check (what Ray's GCS itself asks it)."""

    OK = "ok"              # SERVING
    HUNG = "hung"          # no answer before the deadline: stopped, overloaded or cut off
    GONE = "gone"          # connection refused: no process listens any more


class InstanceStatus(str, Enum):
    PENDING = "pending"        # asked for, not running yet (cloud: pending; local: process starting)
    RUNNING = "running"        # the machine/process is up (Ray may not have joined yet)
    TERMINATED = "terminated"  # gone or going; `detail` says why


@dataclass(frozen=True)
class Instance:
    """One machine as the provider sees it. `id` is rayfleet's name for it (the client token)."""

    id: str
    pool: str
    status: InstanceStatus
    launched_at: float = 0.0
    detail: str = ""                 # e.g. "raylet exited (signal 9)", "spot interruption"
    provider_id: str | None = None   # the provider's own id (EC2 instance id, pod name, PID)
    spot: bool = False
    notice: str = ""                 # the provider announces it goes away (a Kubernetes drain or eviction): why
    notice_deadline: float | None = None  # when it goes, if the provider says (None: UNTIMED_NOTICE_S)


@dataclass(frozen=True)
class RayNode:
    """One Ray node as the GCS sees it."""

    node_id: str
    instance: str | None
    pool: str | None
    alive: bool
    address: str = ""
    draining: bool = False
    idle_ms: int = 0
    death_reason: str = ""
    resources: Mapping[str, float] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    is_head: bool = False
    port: int = 0                   # the raylet's gRPC port (health probes)


@dataclass(frozen=True)
class ClusterView:
    """One observation of the world, taken before planning."""

    ray_nodes: tuple[RayNode, ...] | None
    instances: tuple[Instance, ...] | None
    launch_errors: Mapping[str, str] = field(default_factory=dict)  # instance -> error from the last act
    busy_nodes: frozenset[str] = frozenset()   # Ray node ids running training workers
    demand: Demand | None = None               # Ray's pending demand and node usage; None: not read
    health: Mapping[str, HealthReport] = field(default_factory=dict)  # instance -> newest agent report
    probes: Mapping[str, Probe] = field(default_factory=dict)         # instance -> raylet probe this loop
    quiet_until: float = 0.0   # the controller itself was starved until then: silence before it proves nothing
    notice_acks: frozenset[str] = frozenset()   # Ray node ids whose jobs all checkpointed for their notice

    def ray_by_instance(self) -> dict[str, RayNode]:
        """The newest Ray node per instance label (a restarted raylet registers a new node id)."""
        out: dict[str, RayNode] = {}
        for node in self.ray_nodes or ():
            if node.instance is None:
                continue
            known = out.get(node.instance)
            if known is None or (node.alive and not known.alive):
                out[node.instance] = node
        return out

    def instances_by_id(self) -> dict[str, Instance]:
        return {instance.id: instance for instance in self.instances or ()}
