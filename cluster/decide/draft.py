"""One planning pass's inputs and working copies, and the edits every step makes to them.

`plan` builds a `Draft` from its arguments, hands it to each step in turn, and turns what the
steps left in it into a `Plan`. Steps edit the draft's copies (records, counters), never the
`FleetState` they came from, so a pass that raises leaves the controller's state as it was.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping

from rayfleet.cluster.decide.actions import Action, Evict, Terminate
from rayfleet.cluster.decide.autoscale import PoolTarget
from rayfleet.cluster.decide.events import Event
from rayfleet.cluster.decide.state import FleetState, NodeRecord, NodeState
from rayfleet.cluster.decide.view import ClusterView, Instance, RayNode
from rayfleet.cluster.spec.fleet import FleetSpec, PoolSpec


@dataclass(frozen=True)
class QuarantineRequests:
    """What users asked of quarantined nodes (`rayfleet quarantine release|terminate`)."""

    release: Mapping[str, float] = dataclasses.field(default_factory=dict)   # instance -> asked at
    terminate: frozenset[str] = frozenset()


class Draft:
    """The plan being drafted: what one pass was given, and what it has decided so far."""

    def __init__(self, spec: FleetSpec, state: FleetState, view: ClusterView, now: float,
                 targets: Mapping[str, int], requests: QuarantineRequests) -> None:
        # Given: read by the steps, never changed.
        self.spec = spec
        self.state = state
        self.view = view
        self.now = now
        self.targets = targets          # manual targets (`rayfleet scale`), pool -> nodes
        self.requests = requests
        self.pools: dict[str, PoolSpec] = {pool.name: pool for pool in spec.pools}
        # What the provider and Ray list, by instance id; None where that source could not be read.
        self.instances: dict[str, Instance] | None = (
            view.instances_by_id() if view.instances is not None else None)
        self.ray: dict[str, RayNode] | None = view.ray_by_instance() if view.ray_nodes is not None else None
        # Working copies of the remembered state.
        self.records: dict[str, NodeRecord] = dict(state.nodes)
        self.sequence = dict(state.sequence)
        self.failures = dict(state.pool_failures)
        self.replacements = dict(state.replacements)
        self.demand_at = dict(state.demand_at)
        # Decided so far.
        self.actions: list[Action] = []
        self.events: list[Event] = []
        self.failed_pools: set[str] = set()   # pools whose launch failures already backed off this pass
        self.autoscale: dict[str, PoolTarget] = {}
        self.wants: dict[str, int] = {}       # each pool's desired size this pass

    def event(self, kind: str, message: str, record: NodeRecord | None = None, reason: str = "",
              pool: str | None = None) -> None:
        self.events.append(Event(time=self.now, kind=kind, message=message,
                                 pool=record.pool if record else pool,
                                 instance=record.instance if record else None, reason=reason))

    def move(self, record: NodeRecord, state: NodeState, reason: str, **changes: object) -> NodeRecord:
        """Record a checked transition (`NodeRecord.to`) in the working copy."""
        moved = record.to(state, self.now, reason, **changes)
        self.records[record.instance] = moved
        return moved

    def terminate(self, record: NodeRecord, reason: str, preempted: bool = False) -> None:
        """Stop a node's machine; its actors are declared dead first so their jobs fail over now."""
        if record.node_id:
            self.actions.append(Evict(record.pool, record.instance, record.node_id, reason, preempted))
        self.move(record, NodeState.TERMINATING, reason, last_action_at=self.now)
        self.actions.append(Terminate(record.pool, record.instance, reason))
