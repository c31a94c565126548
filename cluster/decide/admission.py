"""Admission: a node joins Ray with no CPUs, so no work lands on it before it passed its checks.

A ready (or degraded) pool node is given its CPUs once its health agent has reported; a hot
spare is admitted when it is promoted into the pool. Quarantine takes the CPUs back.
"""
from __future__ import annotations

import dataclasses

from rayfleet.cluster.decide.actions import Admit
from rayfleet.cluster.decide.draft import Draft
from rayfleet.cluster.decide.state import NodeRecord, NodeState


def admit_nodes(draft: Draft) -> None:
    for record in list(draft.records.values()):
        admit(draft, record)


def admit(draft: Draft, record: NodeRecord) -> None:
    """Give a ready, non-spare node its CPUs once its agent reported it healthy (or degraded)."""
    if record.admitted or record.spare or record.node_id is None:
        return
    if record.state not in (NodeState.READY, NodeState.DEGRADED) or record.instance not in draft.view.health:
        return
    pool = draft.pools.get(record.pool)
    if pool is None:
        return
    draft.records[record.instance] = dataclasses.replace(record, admitted=True)
    draft.actions.append(Admit(pool.name, record.instance, record.node_id, pool.cpus_per_node))
    draft.event("admitted", f"{record.instance} admitted: its checks passed, it now takes work", record,
                reason="checks passed")
