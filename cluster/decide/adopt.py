"""Adoption: instances of this fleet the provider lists but the controller does not remember.

That happens when the controller restarted without its state, or a launch raced a crash. Such an
instance is taken into the fleet as it is, never launched again; one of a pool no longer in the
spec is terminated.
"""
from __future__ import annotations

from rayfleet.cluster.decide.actions import Terminate
from rayfleet.cluster.decide.draft import Draft
from rayfleet.cluster.decide.naming import named_by_fleet, number_of
from rayfleet.cluster.decide.state import NodeRecord, NodeState
from rayfleet.cluster.decide.view import Instance, InstanceStatus
from rayfleet.names import SPARE_LABEL

S = NodeState


def adopt_instances(draft: Draft) -> None:
    """Adopt every live instance the provider lists that no record names (nothing when the
    provider could not be read)."""
    if draft.instances is None:
        return
    for instance in draft.instances.values():
        if instance.id in draft.records or instance.status is InstanceStatus.TERMINATED:
            continue
        number = number_of(instance.id)
        if number is not None:
            draft.sequence[instance.pool] = max(draft.sequence.get(instance.pool, 0), number)
        if instance.pool not in draft.pools:
            _terminate_orphan(draft, instance)
        else:
            _adopt(draft, instance)


def _terminate_orphan(draft: Draft, instance: Instance) -> None:
    record = NodeRecord(instance.id, instance.pool, S.TERMINATING, draft.now,
                        "its pool is no longer in the spec", launched_at=instance.launched_at,
                        last_action_at=draft.now)
    draft.records[instance.id] = record
    draft.actions.append(Terminate(instance.pool, instance.id, record.reason))
    draft.event("terminate", f"{instance.id} terminated: pool {instance.pool} left the spec",
                record, reason="spec")


def _adopt(draft: Draft, instance: Instance) -> None:
    """A record for the instance as Ray shows it: READY if its node is alive, else BOOTING."""
    if not named_by_fleet(instance.id, draft.spec.name, draft.pools):
        consume_request(draft, instance.pool)
    node = (draft.ray or {}).get(instance.id)
    alive = node is not None and node.alive
    spare = bool(node is not None and node.labels.get(SPARE_LABEL) == "true")
    record = NodeRecord(instance.id, instance.pool, S.READY if alive else S.BOOTING, draft.now,
                        "adopted", launched_at=instance.launched_at or draft.now,
                        node_id=node.node_id if alive else None,
                        address=node.address if alive else None, spare=spare)
    draft.records[instance.id] = record
    draft.event("adopt", f"adopted {instance.id} ({record.state.value}); it was running already",
                record, reason="restart")


def consume_request(draft: Draft, pool: str) -> None:
    """A provider that names its own machines (KubeRay names pods) answers a launch with an
    instance of another name: it fulfils the oldest request of its pool, which is dropped."""
    waiting = [r for r in draft.records.values() if r.pool == pool and r.state is S.REQUESTED
               and named_by_fleet(r.instance, draft.spec.name, draft.pools)]
    if waiting:
        oldest = min(waiting, key=lambda r: (r.since, r.instance))
        del draft.records[oldest.instance]
