"""One reconcile pass: plan on what was observed, persist the decision, then act on it.

The controller actor, the fleet simulator (cluster/sim) and the provider test harness all run
`reconcile`; they differ only in what a `Loop` is: where its view comes from (real Ray and a
provider, a simulated cloud, a provider with Ray emulated), where a decision is persisted (the
GCS KV store, or memory) and what carries out the actions (`act` through a provider, or the
simulated cloud).

Sync, then step: the view is taken before `plan` and never during it; `plan` is pure.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Protocol, Sequence

from rayfleet.cluster.decide.plan import Plan, QuarantineRequests, plan
from rayfleet.cluster.decide.state import FleetState
from rayfleet.cluster.decide.usage import accumulate
from rayfleet.cluster.decide.view import ClusterView
from rayfleet.cluster.spec.fleet import FleetSpec


class Loop(Protocol):
    """What one reconciler keeps between passes, and how it persists and acts."""

    spec: FleetSpec
    state: FleetState
    targets: Mapping[str, int]
    requests: QuarantineRequests
    usage: UsageMeter

    def persist(self, result: Plan) -> None:
        """Make `result` durable before anything is acted on (write-ahead)."""

    def apply(self, actions: Sequence[object]) -> None:
        """Carry out the plan's actions (idempotent: a repeated action changes nothing)."""


@dataclass
class UsageMeter:
    """GPU-seconds by pool and state (cluster/decide/usage.py), advanced once per pass.

    The time since the previous pass is counted against the nodes as that pass left them. A gap
    longer than `max_gap_s` means the reconciler itself was down (a controller restart): nobody
    saw the fleet then, so that time is not counted. The simulator, whose clock jumps over quiet
    hours on purpose, passes no limit.
    """

    totals: dict[str, dict[str, float]] = field(default_factory=dict)
    at: float | None = None
    busy: frozenset[str] = frozenset()
    max_gap_s: float | None = None

    def advance(self, spec: FleetSpec, state: FleetState, now: float, busy: frozenset[str]) -> None:
        if self.at is not None and (self.max_gap_s is None or now - self.at < self.max_gap_s):
            gpus = {pool.name: pool.gpus_per_node for pool in spec.pools}
            self.totals = accumulate(self.totals, state.nodes.values(), gpus, self.busy, now - self.at)
        self.at, self.busy = now, busy


def reconcile(loop: Loop, view: ClusterView, now: float) -> Plan:
    """One pass over `loop`: account the time since the last pass, plan, persist, act."""
    loop.usage.advance(loop.spec, loop.state, now, view.busy_nodes)
    result = plan(loop.spec, loop.state, view, now, loop.targets, loop.requests)
    loop.persist(result)
    # Memory follows what was persisted at once: if acting fails below, the next pass goes on from
    # this state (its steps are idempotent) instead of deciding, and announcing, it again.
    loop.state = result.state
    loop.apply(result.actions)
    return result
