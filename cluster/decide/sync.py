"""Pass 1, sync: each remembered node's record brought up to date with what the provider, Ray and
its health agent say.

Passive, as autoscaler v2's reconciler's sync: a record follows what was observed of it (the
provider lists its instance, its Ray node joined or died, its agent reported a failed check or a
notice, a boot timed out). Where an observation leaves one thing to do, it is done here:
terminate a lost node or a failed launch, drain a noticed one. What needs the whole fleet (rate
limits, pool sizes) is decided by the steps after.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

from rayfleet.cluster.decide.draft import Draft
from rayfleet.cluster.decide.notices import UNTIMED_NOTICE_S, take_notice
from rayfleet.cluster.decide.state import NodeRecord, NodeState
from rayfleet.cluster.decide.view import Instance, InstanceStatus, Probe, RayNode
from rayfleet.cluster.health.policy import judge, liveness
from rayfleet.cluster.health.report import HealthReport

S = NodeState


def sync_records(draft: Draft) -> None:
    """Bring every remembered record up to date with this pass's observations."""
    for record in list(draft.records.values()):
        instance = draft.instances.get(record.instance) if draft.instances is not None else None
        node = draft.ray.get(record.instance) if draft.ray is not None else None
        sync = SYNC_BY_STATE.get(record.state)
        if sync is not None:
            sync(draft, record, instance, node)


def _gone(draft: Draft, instance: Instance | None) -> bool:
    """The provider was read and no longer lists the instance, or lists it terminated."""
    return draft.instances is not None and (instance is None or instance.status is InstanceStatus.TERMINATED)


def _gone_detail(instance: Instance | None) -> str:
    return (instance.detail if instance is not None else "") or "the provider no longer lists it"


def _sync_terminating(draft: Draft, record: NodeRecord, instance: Instance | None, node: RayNode | None) -> None:
    if _gone(draft, instance):
        draft.move(record, S.TERMINATED, "terminated")
        draft.event("terminated", f"{record.instance} terminated", record, reason=record.reason)


def _sync_requested(draft: Draft, record: NodeRecord, instance: Instance | None, node: RayNode | None) -> None:
    error = draft.view.launch_errors.get(record.instance)
    boot_timeout_s = draft.spec.scaling.boot_timeout_s
    if error:
        fail_launch(draft, record, error)
    elif node is not None and node.alive:
        joined(draft, record, node)
    elif draft.instances is not None and instance is not None and instance.status is not InstanceStatus.TERMINATED:
        draft.move(record, S.BOOTING, "instance up, waiting for Ray to join",
                   launched_at=instance.launched_at or record.launched_at)
    elif _gone(draft, instance) and instance is not None:
        fail_launch(draft, record, _gone_detail(instance))
    elif draft.now - record.since > boot_timeout_s:
        fail_launch(draft, record, f"the provider did not show it within {boot_timeout_s:.0f}s")


def _sync_booting(draft: Draft, record: NodeRecord, instance: Instance | None, node: RayNode | None) -> None:
    boot_timeout_s = draft.spec.scaling.boot_timeout_s
    if _gone(draft, instance):
        fail_launch(draft, record, f"instance gone while booting: {_gone_detail(instance)}")
    elif node is not None and node.alive:
        joined(draft, record, node)
    elif draft.now - record.launched_at > boot_timeout_s:
        fail_launch(draft, record, f"did not join Ray within {boot_timeout_s:.0f}s")


def _sync_joined(draft: Draft, record: NodeRecord, instance: Instance | None, node: RayNode | None) -> None:
    """A node that joined Ray: lost when its instance or Ray node is gone, else its health judged."""
    know_ray = draft.ray is not None
    if _gone(draft, instance):
        lost(draft, record, f"instance gone: {_gone_detail(instance)}")
    elif know_ray and node is not None and not node.alive:
        lost(draft, record, f"Ray marked the node dead: {node.death_reason or 'no reason given'}")
    elif know_ray and node is None:
        lost(draft, record, "its Ray node is no longer registered")
    else:
        if node is not None and node.alive and node.node_id != record.node_id:
            # The same instance rejoined with a new raylet (e.g. after a head restart): a new
            # raylet has its start-up resources again, so it is admitted anew.
            record = dataclasses.replace(record, node_id=node.node_id, address=node.address, admitted=False)
            draft.records[record.instance] = record
        if record.state in (S.READY, S.SUSPECT, S.DEGRADED, S.UNHEALTHY):
            judge_health(draft, record, instance)
        elif draft.view.probes.get(record.instance) is Probe.GONE:
            lost(draft, record, "its raylet refuses connections: the process is gone")


SYNC_BY_STATE: Mapping[NodeState, Callable[[Draft, NodeRecord, Instance | None, RayNode | None], None]] = {
    S.TERMINATING: _sync_terminating,
    S.REQUESTED: _sync_requested,
    S.BOOTING: _sync_booting,
    **{state: _sync_joined for state in (S.READY, S.SUSPECT, S.DEGRADED, S.UNHEALTHY, S.DRAINING, S.QUARANTINED)},
}
"""How each state's record follows what was observed (TERMINATED: not at all)."""


def joined(draft: Draft, record: NodeRecord, node: RayNode) -> None:
    draft.move(record, S.READY, "joined Ray", node_id=node.node_id, address=node.address)
    draft.failures.pop(record.pool, None)
    kind = "spare" if record.spare else "pool"
    draft.event("joined", f"{record.instance} joined Ray as node {node.node_id[:12]} ({kind})", record)


def fail_launch(draft: Draft, record: NodeRecord, reason: str) -> None:
    """A launch that will not come up: terminate what there is, and back off the pool's launches."""
    # One step of backoff per pass, however many launches of the batch failed together.
    if record.pool not in draft.failed_pools:
        draft.failed_pools.add(record.pool)
        count, _ = draft.failures.get(record.pool, (0, 0.0))
        draft.failures[record.pool] = (count + 1, draft.now)
    draft.event("failed", f"{record.instance} failed to start: {reason}", record, reason="launch")
    draft.terminate(record, reason)


def lost(draft: Draft, record: NodeRecord, reason: str) -> None:
    """The node is gone: no drain can help. Scaling launches its replacement in this pass."""
    draft.event("lost", f"{record.instance} lost: {reason}", record, reason="liveness")
    draft.event("replace", f"{record.instance} terminated for replacement: {reason}", record, reason=reason)
    draft.terminate(record, reason)


def judge_health(draft: Draft, record: NodeRecord, instance: Instance | None = None) -> None:
    """Liveness first (alive / suspect / dead), then a notice (its agent's or its provider's, the
    sooner), then the checks (healthy / degraded / unhealthy), from the node's newest agent report
    and its raylet probe."""
    report = draft.view.health.get(record.instance)
    suspect_since = record.since if record.state is S.SUSPECT else None
    live = liveness(report, draft.view.probes.get(record.instance), draft.now, draft.spec.health,
                    draft.view.quiet_until, suspect_since)
    if live.state == "dead":
        lost(draft, record, live.reason)
        return
    if live.state == "suspect":
        if record.state is not S.SUSPECT:
            draft.event("suspect", f"{record.instance} is suspect: {live.reason}", record, reason="liveness")
        draft.move(record, S.SUSPECT, live.reason)
        return
    notices = [(deadline, why) for deadline, why in _notices(draft, report, instance) if deadline > draft.now]
    if notices:
        take_notice(draft, record, *min(notices))
        return
    verdict = judge(report)
    if verdict.level == "unhealthy":
        if record.state is not S.UNHEALTHY:
            draft.move(record, S.UNHEALTHY, verdict.reason, hardware=verdict.hardware)
            draft.event("unhealthy", f"{record.instance} failed its checks: {verdict.reason}", record,
                        reason="hardware check" if verdict.hardware else "check")
    elif verdict.level == "degraded":
        if record.state is not S.DEGRADED:
            draft.event("degraded", f"{record.instance} is degraded: {verdict.reason}", record, reason="check")
        draft.move(record, S.DEGRADED, verdict.reason)
    elif record.state is not S.READY:
        was = record.state.value
        draft.move(record, S.READY, f"healthy again (was {was})")
        draft.event("recovered", f"{record.instance} is healthy again (was {was})", record)



def _notices(draft: Draft, report: HealthReport | None, instance: Instance | None) -> list[tuple[float, str]]:
    """(deadline, why) of every notice the node has: from its agent (cloud metadata) and from its
    provider (Kubernetes drains and evictions; without a deadline, UNTIMED_NOTICE_S from now)."""
    found = []
    if report is not None and report.notice_deadline:
        found.append((report.notice_deadline, report.notice_reason))
    if instance is not None and instance.notice:
        found.append((instance.notice_deadline or draft.now + UNTIMED_NOTICE_S, instance.notice))
    return found
