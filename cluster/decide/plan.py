"""The planner: desired fleet from observed fleet, as a pure function.

`plan(spec, state, view, now, targets, requests)` takes values and returns values: the next
remembered state, the actions to apply, and the events that explain them. No I/O, no clock, no
randomness: the same function runs against real Ray and against the fleet simulator.

A pass is an ordered list of steps over one `Draft`, in two phases as autoscaler v2's reconciler
works (and as KubeRay's reconciler runs its reconcile functions in order):
1. sync (passive): each record brought up to date with what the provider and Ray say;
2. step (active): launches, terminations, drains and admissions decided from the updated records.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Mapping

from rayfleet.cluster.decide.actions import Action, Admit, Drain, Evict, Launch, RunChecks, Terminate, Unadmit, Vacate
from rayfleet.cluster.decide.admission import admit_nodes
from rayfleet.cluster.decide.adopt import adopt_instances
from rayfleet.cluster.decide.autoscale import PoolTarget
from rayfleet.cluster.decide.draft import Draft, QuarantineRequests
from rayfleet.cluster.decide.events import Event
from rayfleet.cluster.decide.naming import instance_name
from rayfleet.cluster.decide.quarantine import tend_quarantine
from rayfleet.cluster.decide.remediation import finish_drain, remediate
from rayfleet.cluster.decide.retries import (MAX_BACKOFF_S, RELAUNCH_AFTER_S, TERMINATE_RETRY_S, retry_launch,
                                             retry_terminate)
from rayfleet.cluster.decide.scaling import desired_nodes, scale_pools
from rayfleet.cluster.decide.state import FleetState, NodeRecord, NodeState
from rayfleet.cluster.decide.sync import sync_records
from rayfleet.cluster.decide.view import ClusterView
from rayfleet.cluster.spec.fleet import FleetSpec

# What callers of `plan` read with its result: the actions, their timings, a pool's size, a name.
__all__ = [
    "Plan", "QuarantineRequests", "plan", "desired_nodes", "instance_name",
    "Action", "Admit", "Drain", "Evict", "Launch", "RunChecks", "Terminate", "Unadmit", "Vacate",
    "MAX_BACKOFF_S", "RELAUNCH_AFTER_S", "TERMINATE_RETRY_S",
]

S = NodeState


@dataclass(frozen=True)
class Plan:
    state: FleetState
    actions: tuple[Action, ...]
    events: tuple[Event, ...]
    autoscale: Mapping[str, PoolTarget] = field(default_factory=dict)  # per autoscaled pool (status)


TEND_BY_STATE: Mapping[NodeState, Callable[[Draft, NodeRecord], None]] = {
    S.UNHEALTHY: remediate,          # drain (or quarantine) for replacement, within the rate limits
    S.DRAINING: finish_drain,        # terminate at the drain deadline (noticed: once its jobs checkpointed)
    S.QUARANTINED: tend_quarantine,  # release or terminate, as asked or as the pool's limits require
    S.REQUESTED: retry_launch,       # ask again for a launch the provider does not show
    S.TERMINATING: retry_terminate,  # ask again to terminate what the provider still lists
}
"""The step's decision for a node in each state; a state not named here needs none."""


def tend_records(draft: Draft) -> None:
    """Each node's own next step, by its state (one pass over the fleet, in record order: a node
    drained here counts against `max_unavailable` for the nodes after it)."""
    for record in list(draft.records.values()):
        tend = TEND_BY_STATE.get(record.state)
        if tend is not None:
            tend(draft, record)


STEPS: tuple[Callable[[Draft], None], ...] = (
    # 1. sync
    sync_records,     # records follow the provider's instances, Ray's nodes and the agents' reports
    adopt_instances,  # instances of this fleet no record names are adopted, not launched again
    # 2. step
    tend_records,     # per node: remediate, finish drains, tend quarantine, retry launches and terminations
    scale_pools,      # autoscale targets; each pool and its spares launched or removed to size
    admit_nodes,      # nodes whose checks passed get their CPUs
)
"""One planning pass, in order."""


def plan(spec: FleetSpec, state: FleetState, view: ClusterView, now: float,
         targets: Mapping[str, int] | None = None, requests: QuarantineRequests | None = None) -> Plan:
    """Decide what to do next. Pure: see the module docstring."""
    draft = Draft(spec, state, view, now, targets or {}, requests or QuarantineRequests())
    for step in STEPS:
        step(draft)
    return _result(draft)


def _result(draft: Draft) -> Plan:
    nodes = {key: value for key, value in draft.records.items() if value.state is not S.TERMINATED}
    state = dataclasses.replace(draft.state, nodes=nodes, sequence=draft.sequence, pool_failures=draft.failures,
                                replacements=draft.replacements, demand_at=draft.demand_at)
    return Plan(state=state, actions=tuple(draft.actions), events=tuple(draft.events), autoscale=draft.autoscale)
