"""Quarantine: a node that failed a hardware check is kept for diagnosis, out of the pool's capacity.

It leaves quarantine released (a user asked and its checks pass again) or terminated (a user
asked, or the pool's `max_quarantined` / `quarantine_max_age_s` limit was reached).
"""
from __future__ import annotations

import dataclasses

from rayfleet.cluster.decide.actions import RunChecks, Unadmit, Vacate
from rayfleet.cluster.decide.draft import Draft
from rayfleet.cluster.decide.state import NodeRecord, NodeState
from rayfleet.cluster.health.policy import judge

S = NodeState


def quarantine(draft: Draft, record: NodeRecord, reason: str) -> None:
    """Take the node out of service: its CPUs are taken back (Ray 2.60 cannot undo a drain, so a
    drain would make a release impossible) and its work is ended so jobs resume from their
    checkpoints elsewhere."""
    assert record.node_id is not None
    draft.actions.append(Unadmit(record.pool, record.instance, record.node_id))
    draft.actions.append(Vacate(record.pool, record.instance, record.node_id, reason))
    draft.move(record, S.QUARANTINED, reason, admitted=False)
    draft.event("quarantine", f"{record.instance} quarantined: {reason}", record, reason="hardware check")


def tend_quarantine(draft: Draft, record: NodeRecord) -> None:
    """Terminate (asked, or over the pool's limits) or release (asked, checks pass) a quarantined node."""
    asked = draft.requests.release.get(record.instance)
    if asked is not None and asked < record.since:
        asked = None  # asked before this quarantine began: not a release of it
    if record.instance in draft.requests.terminate:
        draft.event("terminate", f"{record.instance} terminated from quarantine on request", record,
                    reason="rayfleet quarantine terminate")
        draft.terminate(record, "terminated from quarantine on request")
    elif asked is not None:
        _release(draft, record, asked)
    else:
        _enforce_limits(draft, record)


def _release(draft: Draft, record: NodeRecord, asked: float) -> None:
    """Run the node's checks once after the request, then release it if their report passes."""
    report = draft.view.health.get(record.instance)
    if record.last_action_at < asked:  # checks not yet run since the request
        draft.actions.append(RunChecks(record.pool, record.instance))
        draft.records[record.instance] = dataclasses.replace(record, last_action_at=draft.now)
    elif report is not None and report.sent_at > asked:
        verdict = judge(report)
        if verdict.level != "unhealthy":
            draft.move(record, S.READY, "released: its checks passed", hardware=False)
            draft.event("release", f"{record.instance} released from quarantine: its checks passed",
                        record, reason="rayfleet quarantine release")
        elif not record.reason.startswith("release refused"):
            draft.move(record, S.QUARANTINED, f"release refused: checks still fail: {verdict.reason}")
            draft.event("release-refused", f"{record.instance} stays quarantined: {verdict.reason}",
                        record, reason="rayfleet quarantine release")


def _enforce_limits(draft: Draft, record: NodeRecord) -> None:
    """Terminate the pool's oldest quarantined node while it has more than `max_quarantined`, and
    any quarantined longer than `quarantine_max_age_s`."""
    health = draft.spec.health
    pool_quarantine = sorted((r for r in draft.records.values()
                              if r.pool == record.pool and r.state is S.QUARANTINED), key=lambda r: r.since)
    too_many = len(pool_quarantine) > health.max_quarantined and record is pool_quarantine[0]
    too_old = draft.now - record.since > health.quarantine_max_age_s
    if too_many or too_old:
        why = (f"quarantine limit: {len(pool_quarantine)} > max_quarantined {health.max_quarantined}"
               if too_many else f"quarantined longer than quarantine_max_age_s {health.quarantine_max_age_s:.0f}")
        draft.event("terminate", f"{record.instance} terminated from quarantine: {why}", record, reason=why)
        draft.terminate(record, why)
