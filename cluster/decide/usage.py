"""The fleet's GPU-hours by state, pure: what its GPUs were doing, loop by loop.

Each loop the controller (and the simulator, through the same function) adds `dt` seconds times
each node's GPUs to one bucket per (pool, state):

    training     joined, admitted and running a training worker (a placed gang)
    idle         joined and able to take work, running none
    spare        a hot spare, joined and waiting
    quarantined  kept out of service for diagnosis
    booting      requested, booting, or joined but not yet admitted (checks pending)
    unavailable  suspect, unhealthy, draining, terminating: paid for, unusable

The split is what the loop saw at its start; with a 0.5 s loop its error is at most one loop per
change of state. Totals are kept by the controller across restarts (stored with its state).
"""
from __future__ import annotations

from typing import Iterable, Mapping

from rayfleet.cluster.decide.state import NodeRecord, NodeState

USAGE_STATES = ("training", "idle", "spare", "quarantined", "booting", "unavailable")


def usage_state(record: NodeRecord, busy: bool) -> str:
    state = record.state
    if state is NodeState.QUARANTINED:
        return "quarantined"
    if state.starting or (state is NodeState.READY and not record.admitted and not record.spare):
        return "booting"
    if state in (NodeState.READY, NodeState.DEGRADED):
        if record.spare:
            return "spare"
        return "training" if busy else "idle"
    return "unavailable"


def accumulate(totals: Mapping[str, Mapping[str, float]], records: Iterable[NodeRecord],
               gpus_per_node: Mapping[str, int], busy_nodes: frozenset[str], dt: float,
               ) -> dict[str, dict[str, float]]:
    """totals (pool -> state -> GPU-seconds) plus `dt` seconds of the nodes as they are now."""
    out = {pool: dict(states) for pool, states in totals.items()}
    if dt <= 0:
        return out
    for record in records:
        gpus = gpus_per_node.get(record.pool, 0)
        if not gpus:
            continue
        bucket = usage_state(record, record.node_id is not None and record.node_id in busy_nodes)
        pool = out.setdefault(record.pool, {})
        pool[bucket] = pool.get(bucket, 0.0) + gpus * dt
    return out


def gpu_hours(totals: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """pool -> state -> GPU-hours, every state present, plus the fleet's sum under `all`."""
    out: dict[str, dict[str, float]] = {}
    for pool, states in totals.items():
        out[pool] = {state: round(states.get(state, 0.0) / 3600.0, 4) for state in USAGE_STATES}
    out["all"] = {state: round(sum(p[state] for p in out.values()), 4) for state in USAGE_STATES}
    return out
