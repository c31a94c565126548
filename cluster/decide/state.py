"""Named node states, their allowed transitions, and the controller's remembered fleet state.

Autoscaler v2's instance manager gives every instance one state and checks every transition; so do
we. A node is keyed by its instance id (the provider's name for it, also the Ray label
`rayfleet.io/instance`), which is how Ray nodes and provider instances are joined.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Mapping


class NodeState(str, Enum):
    REQUESTED = "requested"      # launch decided and recorded; the provider has not shown it yet
    BOOTING = "booting"          # the provider has it; its Ray node has not joined yet
    READY = "ready"              # joined Ray, alive, passing checks
    SUSPECT = "suspect"          # unresponsive; being confirmed by more evidence before it is failed
    DEGRADED = "degraded"        # working but below thresholds (slow, warm): kept, watched
    UNHEALTHY = "unhealthy"      # alive but failing a check: to be drained and replaced (or held)
    DRAINING = "draining"        # Ray drain requested: no new work lands; terminated after
    QUARANTINED = "quarantined"  # failed a hardware check; drained and kept for diagnosis
    TERMINATING = "terminating"  # terminate requested from the provider
    TERMINATED = "terminated"    # gone; kept only as history

    @property
    def counts_as_capacity(self) -> bool:
        """States that count toward a pool's desired size (a replacement is not launched for them)."""
        return self in _CAPACITY

    @property
    def starting(self) -> bool:
        return self in (NodeState.REQUESTED, NodeState.BOOTING)


# UNHEALTHY counts: a failing node that remediation has not started to drain (held by a rate
# limit) still runs its work; its replacement comes when it drains, not before, or a flapping
# check would launch a node per flap.
_CAPACITY = frozenset({NodeState.REQUESTED, NodeState.BOOTING, NodeState.READY,
                       NodeState.SUSPECT, NodeState.DEGRADED, NodeState.UNHEALTHY})

S = NodeState
TRANSITIONS: Mapping[NodeState, frozenset[NodeState]] = {
    S.REQUESTED: frozenset({S.BOOTING, S.READY, S.UNHEALTHY, S.TERMINATING}),
    S.BOOTING: frozenset({S.READY, S.UNHEALTHY, S.TERMINATING}),
    S.READY: frozenset({S.SUSPECT, S.DEGRADED, S.UNHEALTHY, S.DRAINING, S.QUARANTINED, S.TERMINATING}),
    S.SUSPECT: frozenset({S.READY, S.DEGRADED, S.UNHEALTHY, S.DRAINING, S.TERMINATING}),
    S.DEGRADED: frozenset({S.READY, S.SUSPECT, S.UNHEALTHY, S.DRAINING, S.QUARANTINED, S.TERMINATING}),
    S.UNHEALTHY: frozenset({S.READY, S.SUSPECT, S.DEGRADED, S.DRAINING, S.QUARANTINED, S.TERMINATING}),
    S.DRAINING: frozenset({S.QUARANTINED, S.TERMINATING, S.UNHEALTHY}),
    S.QUARANTINED: frozenset({S.READY, S.TERMINATING}),
    S.TERMINATING: frozenset({S.TERMINATED}),
    S.TERMINATED: frozenset(),
}


class IllegalTransition(ValueError):
    pass


@dataclass(frozen=True)
class NodeRecord:
    """What the controller remembers of one node."""

    instance: str
    pool: str
    state: NodeState
    since: float                     # when it entered `state`
    reason: str = ""                 # why it entered `state` (shown by status, events, explain)
    launched_at: float = 0.0
    node_id: str | None = None       # Ray node id once joined
    address: str | None = None
    spare: bool = False              # a hot spare: joined, kept out of the pool's capacity
    admitted: bool = False           # given its CPUs: nodes join with none, so no work lands before
    hardware: bool = False           # its failure came from a hardware check (quarantine, not delete)
    notice_deadline: float | None = None  # announced to go away then (spot interruption, eviction)
    launch_attempts: int = 0
    last_action_at: float = 0.0      # last launch or terminate request (both are retried, idempotently)

    def to(self, state: NodeState, now: float, reason: str, **changes: Any) -> NodeRecord:
        """The record after a checked transition."""
        if state is self.state:
            return dataclasses.replace(self, reason=reason, **changes) if changes or reason != self.reason else self
        if state not in TRANSITIONS[self.state]:
            raise IllegalTransition(f"{self.instance}: {self.state.value} -> {state.value} is not allowed")
        return dataclasses.replace(self, state=state, since=now, reason=reason, **changes)

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["state"] = self.state.value
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> NodeRecord:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        values["state"] = NodeState(values["state"])
        return cls(**values)


@dataclass(frozen=True)
class FleetState:
    """The controller's memory between loops; persisted so a restarted controller resumes.

    `nodes` holds every node not yet terminated, keyed by instance id. `sequence` numbers new
    instances per pool so names never repeat within a fleet's life.
    """

    nodes: Mapping[str, NodeRecord] = field(default_factory=dict)
    sequence: Mapping[str, int] = field(default_factory=dict)
    pool_failures: Mapping[str, tuple[int, float]] = field(default_factory=dict)  # pool -> (count, last at)
    replacements: Mapping[str, tuple[float, ...]] = field(default_factory=dict)  # pool -> recent times
    demand_at: Mapping[str, float] = field(default_factory=dict)  # pool -> when placeable demand was last pending

    def in_pool(self, pool: str) -> list[NodeRecord]:
        return [record for record in self.nodes.values() if record.pool == pool]

    def to_json(self) -> str:
        return json.dumps({
            "nodes": [record.to_json() for record in self.nodes.values()],
            "sequence": dict(self.sequence),
            "pool_failures": {pool: list(value) for pool, value in self.pool_failures.items()},
            "replacements": {pool: list(times) for pool, times in self.replacements.items()},
            "demand_at": dict(self.demand_at),
        }, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes | None) -> FleetState:
        if not text:
            return cls()
        data = json.loads(text)
        records = [NodeRecord.from_json(item) for item in data.get("nodes", [])]
        return cls(
            nodes={record.instance: record for record in records},
            sequence=dict(data.get("sequence", {})),
            pool_failures={pool: (int(v[0]), float(v[1])) for pool, v in data.get("pool_failures", {}).items()},
            replacements={pool: tuple(times) for pool, times in data.get("replacements", {}).items()},
            demand_at={pool: float(at) for pool, at in data.get("demand_at", {}).items()},
        )
