"""Remediation: a live node failing its checks is drained, then terminated and replaced.

UNHEALTHY -> DRAINING (no new work lands; running work gets `drain_deadline_s`) -> TERMINATING.
The pool's replacement is launched by scaling once the node stops counting as capacity, which is
when it starts draining. Two limits hold a failing node where it is: `max_replacements_per_hour`
(fleet health policy, per pool) and the pool's `max_unavailable` (nodes draining at once). A node
that failed a hardware check is quarantined instead of drained.
"""
from __future__ import annotations

from rayfleet.cluster.decide.actions import Drain
from rayfleet.cluster.decide.draft import Draft
from rayfleet.cluster.decide.notices import end_noticed
from rayfleet.cluster.decide.quarantine import quarantine
from rayfleet.cluster.decide.state import NodeRecord, NodeState
from rayfleet.cluster.spec.fleet import PoolSpec

S = NodeState
REPLACEMENT_WINDOW_S = 3600.0
"""`max_replacements_per_hour` counts the replacements started within this window."""

HELD = "held"
"""How the reason of a node a limit holds begins (its check's reason follows after "; ")."""


def remediate(draft: Draft, record: NodeRecord) -> None:
    """Drain (or quarantine) an unhealthy node for replacement, unless a limit holds it."""
    pool = draft.pools.get(record.pool)
    if pool is None:
        return
    recent = [t for t in draft.replacements.get(pool.name, ()) if draft.now - t < REPLACEMENT_WINDOW_S]
    held = _limit_reached(draft, pool, len(recent))
    if held:
        if not record.reason.startswith(HELD):
            draft.event("held", f"{record.instance} not replaced yet, {held}", record, reason=record.reason)
            draft.move(record, S.UNHEALTHY, f"{held}; {record.reason}")
        return
    draft.replacements[pool.name] = (*recent, draft.now)
    reason = record.reason.split("; ", 1)[-1] if record.reason.startswith(HELD) else record.reason
    if record.hardware and record.node_id:
        quarantine(draft, record, reason)
        return
    if record.node_id:
        draft.actions.append(Drain(pool.name, record.instance, record.node_id, reason,
                                   deadline_s=draft.spec.health.drain_deadline_s, preemption=True))
    draft.move(record, S.DRAINING, reason)
    draft.event("drain", f"{record.instance} draining for replacement: {reason}", record, reason="check")


def _limit_reached(draft: Draft, pool: PoolSpec, recent: int) -> str | None:
    """Why no replacement may start in `pool` now, or None."""
    draining = sum(r.pool == pool.name and r.state is S.DRAINING for r in draft.records.values())
    if recent >= draft.spec.health.max_replacements_per_hour:
        return f"{HELD}: {recent} replacements in the last hour (max_replacements_per_hour)"
    if draining >= pool.max_unavailable:
        return f"{HELD}: {draining} node(s) of {pool.name} already draining (max_unavailable)"
    return None


def finish_drain(draft: Draft, record: NodeRecord) -> None:
    """Terminate a draining node when its drain deadline comes (a noticed node: see `notices`)."""
    if record.notice_deadline:
        end_noticed(draft, record, record.notice_deadline)
        return
    if draft.now - record.since >= draft.spec.health.drain_deadline_s:
        draft.event("replace", f"{record.instance} terminated for replacement: {record.reason}", record,
                    reason=record.reason)
        draft.terminate(record, record.reason)
