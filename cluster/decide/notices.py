"""Nodes announced to go away, from their agents' reports (a spot interruption, a rebalance
recommendation) or from their provider (a Kubernetes node drain, a pod eviction).

A noticed node is drained with the notice's deadline and replaced in the same pass, before it
goes; it is terminated as soon as its jobs have checkpointed for the notice, or at the deadline.
"""
from __future__ import annotations

from rayfleet.cluster.decide.actions import Drain
from rayfleet.cluster.decide.draft import Draft
from rayfleet.cluster.decide.state import NodeRecord, NodeState

UNTIMED_NOTICE_S = 120.0
"""A notice that names no deadline (a cordoned Kubernetes node: `kubectl drain` evicts next) is
taken as AWS's spot warning, two minutes: the jobs checkpoint now, and the node is ended once they
did. With the rendered PodDisruptionBudget (`maxUnavailable: 0` on workers) the drain's evictions
wait until then."""


def take_notice(draft: Draft, record: NodeRecord, deadline: float, why: str) -> None:
    """The node goes away at `deadline`: drain it with that deadline (no new work; Ray Train sees
    a preemption), tell its jobs to checkpoint now (the controller publishes the notice), and
    replace it in this same pass (a draining node is not capacity), before it goes."""
    reason = f"{why}: goes in {deadline - draft.now:.0f}s"
    if record.node_id:
        draft.actions.append(Drain(record.pool, record.instance, record.node_id, reason,
                                   deadline_s=max(0.0, deadline - draft.now), preemption=True))
    draft.move(record, NodeState.DRAINING, reason, notice_deadline=deadline)
    draft.event("notice", f"{record.instance} {reason}; replacing it now", record, reason="notice")


def end_noticed(draft: Draft, record: NodeRecord, deadline: float) -> None:
    """Terminate a noticed, draining node as soon as every job on it checkpointed for the notice
    (a node running no job counts: nothing to save), or when its notice's `deadline` comes. (Ray's
    node table reports idleness as of registration, so it is not read here.)"""
    acked = record.node_id in draft.view.notice_acks
    if acked or draft.now >= deadline:
        why = "its jobs checkpointed" if acked else "its notice's deadline came"
        draft.event("replace", f"{record.instance} ended before its notice ({why})", record, reason="notice")
        draft.terminate(record, record.reason, preempted=True)
