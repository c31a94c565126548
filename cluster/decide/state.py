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
    QUARANTINED = "quarantined"  # failed a hardware check; out of service, kept for diagnosis
    TERMINATING = "terminating"  # terminate requested from the provider
    TERMINATED = "terminated"    # the provider no longer lists it; its record is then dropped

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

# Every allowed edge, with what causes it: `sync` is pass 1 (an observation), the rest are the
# step's decisions (cluster/decide/*.py). A record may also stay in its state with a new reason.
# The edges marked "not taken" are allowed, though no step makes them.
TRANSITIONS: Mapping[NodeState, frozenset[NodeState]] = {
    S.REQUESTED: frozenset({
        # sync: the provider lists the instance; its Ray node has not joined yet.
        S.BOOTING,
        # sync: its Ray node had already joined when a pass first saw the instance.
        S.READY,
        # Not taken: checks are judged only once a node has joined Ray.
        S.UNHEALTHY,
        # sync: the launch failed (act's error, the provider lists it terminated, or it was not
        # shown within boot_timeout_s); or scaling removes it, unstarted nodes first.
        S.TERMINATING,
    }),
    S.BOOTING: frozenset({
        # sync: its Ray node joined.
        S.READY,
        # Not taken: checks are judged only once a node has joined Ray.
        S.UNHEALTHY,
        # sync: the instance went while booting, or did not join Ray within boot_timeout_s; or
        # scaling removes it.
        S.TERMINATING,
    }),
    S.READY: frozenset({
        # sync: no heartbeat from its agent for heartbeat_timeout_s: confirmed before it is failed.
        S.SUSPECT,
        # sync: a check warns (slow, hot, a straggler), none fails.
        S.DEGRADED,
        # sync: a check failed.
        S.UNHEALTHY,
        # sync: its agent reports a notice (spot interruption, eviction): drained to its deadline.
        S.DRAINING,
        # Not taken: quarantine starts from UNHEALTHY (remediation of a hardware failure).
        S.QUARANTINED,
        # sync: lost (instance gone, Ray node dead or unregistered, raylet refuses connections);
        # or scaling removes it (drained first, for scale-down).
        S.TERMINATING,
    }),
    S.SUSPECT: frozenset({
        # sync: its agent reports again and its checks pass.
        S.READY,
        # sync: its agent reports again; a check warns.
        S.DEGRADED,
        # sync: its agent reports again; a check failed.
        S.UNHEALTHY,
        # sync: its agent reports again, with a notice.
        S.DRAINING,
        # sync: lost (still silent, its raylet not answering, after confirm_window_s; or gone as
        # from READY); or scaling removes it.
        S.TERMINATING,
    }),
    S.DEGRADED: frozenset({
        # sync: its checks pass again.
        S.READY,
        # sync: no heartbeat for heartbeat_timeout_s.
        S.SUSPECT,
        # sync: a check failed.
        S.UNHEALTHY,
        # sync: its agent reports a notice.
        S.DRAINING,
        # Not taken: quarantine starts from UNHEALTHY.
        S.QUARANTINED,
        # sync: lost; or scaling removes it.
        S.TERMINATING,
    }),
    S.UNHEALTHY: frozenset({
        # sync: its checks pass again before remediation drained it (a limit held it).
        S.READY,
        # sync: no heartbeat for heartbeat_timeout_s.
        S.SUSPECT,
        # sync: no check fails any more; one warns.
        S.DEGRADED,
        # remediation: drained for replacement (within max_replacements_per_hour and the pool's
        # max_unavailable); or sync: its agent reports a notice.
        S.DRAINING,
        # remediation: the failed check was a hardware check and the node is in Ray: kept for
        # diagnosis instead of drained.
        S.QUARANTINED,
        # sync: lost; or scaling removes it (it still counts as capacity).
        S.TERMINATING,
    }),
    S.DRAINING: frozenset({
        # Not taken: quarantine starts from UNHEALTHY.
        S.QUARANTINED,
        # remediation: its drain_deadline_s passed; notices: its jobs checkpointed for the notice,
        # or the notice's deadline came; or sync: lost (gone, dead, raylet refuses connections).
        S.TERMINATING,
        # Not taken: a draining node's checks are not judged.
        S.UNHEALTHY,
    }),
    S.QUARANTINED: frozenset({
        # quarantine: released on request once its checks, run after the request, pass.
        S.READY,
        # quarantine: terminated on request, over max_quarantined (oldest first) or
        # quarantine_max_age_s; or sync: lost.
        S.TERMINATING,
    }),
    S.TERMINATING: frozenset({
        # sync: the provider no longer lists the instance, or lists it terminated.
        S.TERMINATED,
    }),
    # Final: the record leaves the remembered state at the end of the pass.
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
        """The whole state as one document (the single-key layout; the simulator's baseline)."""
        return json.dumps({"nodes": [record.to_json() for record in self.nodes.values()], **self._fleet_fields()},
                          sort_keys=True)

    def fleet_json(self) -> str:
        """Everything but the node records: what the store keeps beside one record per node."""
        return json.dumps(self._fleet_fields(), sort_keys=True)

    def _fleet_fields(self) -> dict[str, Any]:
        return {
            "sequence": dict(self.sequence),
            "pool_failures": {pool: list(value) for pool, value in self.pool_failures.items()},
            "replacements": {pool: list(times) for pool, times in self.replacements.items()},
            "demand_at": dict(self.demand_at),
        }

    @classmethod
    def from_json(cls, text: str | bytes | None) -> FleetState:
        if not text:
            return cls()
        data = json.loads(text)
        return cls.from_parts(data, [NodeRecord.from_json(item) for item in data.get("nodes", [])])

    @classmethod
    def from_parts(cls, fleet: Mapping[str, Any], records: list[NodeRecord]) -> FleetState:
        """The state from its fleet-level fields (as `fleet_json` writes them) and its node records."""
        return cls(
            nodes={record.instance: record for record in records},
            sequence=dict(fleet.get("sequence", {})),
            pool_failures={pool: (int(v[0]), float(v[1])) for pool, v in fleet.get("pool_failures", {}).items()},
            replacements={pool: tuple(times) for pool, times in fleet.get("replacements", {}).items()},
            demand_at={pool: float(at) for pool, at in fleet.get("demand_at", {}).items()},
        )
