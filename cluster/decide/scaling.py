"""Scaling: each pool brought to its desired size, and its hot spares to `hot_spares`.

A pool's desired size is its floor (the manual target, else the spec's `nodes`, else
`min_nodes`), raised by the autoscaler's target from Ray's pending demand, within
[min_nodes, max_nodes]. Below it, ready hot spares are promoted first (a replacement in about a
second), then nodes launched, `upscaling_speed` a pass at most and backing off after launch
failures. Above it, nodes are removed cheapest first: an autoscaled pool gives up only its idle
nodes.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

from rayfleet.cluster.decide.actions import Drain, Launch, Terminate
from rayfleet.cluster.decide.autoscale import autoscale_targets, idle_timeout_s
from rayfleet.cluster.decide.draft import Draft
from rayfleet.cluster.decide.naming import instance_name
from rayfleet.cluster.decide.retries import backoff_s
from rayfleet.cluster.decide.state import NodeRecord, NodeState
from rayfleet.cluster.spec.fleet import PoolSpec

S = NodeState
CAPACITY = frozenset(state for state in NodeState if state.counts_as_capacity)

SCALE_DOWN_DRAIN_S = 30.0
"""Deadline of the drain a ready node gets before scale-down terminates it (an idle-termination
drain, which Ray may decline)."""


def desired_nodes(pool: PoolSpec, targets: Mapping[str, int], autoscale: int | None = None) -> int:
    """The pool's size. Its floor is the manual target (rayfleet scale) if set, else the spec's
    `nodes`, else min_nodes; the autoscaler's target raises it, never lowers it; within [min, max]."""
    floor = targets.get(pool.name, pool.desired)
    wanted = floor if autoscale is None else max(floor, autoscale)
    return max(pool.min_nodes, min(pool.max_nodes, wanted))


def scale_pools(draft: Draft) -> None:
    """Set each autoscaled pool's target from Ray's demand, then size every pool and its spares."""
    capacity = capacity_by_pool(draft.records)
    draft.autoscale = autoscale_targets(
        draft.spec, {pool.name: capacity.get((pool.name, False), []) for pool in draft.spec.pools},
        draft.view.demand, draft.view.busy_nodes, draft.now)
    hold_idle_while_demand_comes_and_goes(draft)
    for pool in draft.spec.pools:
        target = draft.autoscale.get(pool.name)
        draft.wants[pool.name] = desired_nodes(pool, draft.targets, target.nodes if target else None)
        size_pool(draft, pool, spare=False, want=draft.wants[pool.name],
                  members=capacity.get((pool.name, False), []))
        # spares promoted into the pool just now are spares no more
        spares = [draft.records[r.instance] for r in capacity.get((pool.name, True), [])]
        size_pool(draft, pool, spare=True, want=pool.hot_spares, members=[r for r in spares if r.spare])


def capacity_by_pool(records: Mapping[str, NodeRecord]) -> dict[tuple[str, bool], list[NodeRecord]]:
    """Records that count as capacity, by (pool, spare): one pass over the fleet, not one per
    pool (12,500 nodes in tens of pools must plan well inside a second)."""
    out: dict[tuple[str, bool], list[NodeRecord]] = {}
    for record in records.values():
        if record.state in CAPACITY:
            key = (record.pool, record.spare)
            members = out.get(key)
            if members is None:
                out[key] = [record]
            else:
                members.append(record)
    return out


def hold_idle_while_demand_comes_and_goes(draft: Draft) -> None:
    """No idle node is removed from a pool that had placeable pending demand within its idle
    timeout: Ray Train gives up on a gang it cannot place yet and asks again later (its
    placement group comes and goes while the pool grows), and a node idle only because the
    rest of its gang was still booting belongs to that gang. Demand that would not fit even at
    max_nodes holds nothing."""
    for name, target in list(draft.autoscale.items()):
        pool = draft.pools.get(name)
        if pool is None:
            continue
        if target.pending_bundles > target.unplaced_bundles:
            draft.demand_at[name] = draft.now
        seen = draft.demand_at.get(name)
        if target.removable and seen is not None and draft.now - seen < idle_timeout_s(draft.spec, pool):
            draft.autoscale[name] = dataclasses.replace(
                target, removable=(), nodes=target.nodes + len(target.removable),
                reason=f"{target.reason}; idle nodes held: demand was pending {draft.now - seen:.0f}s ago")


def size_pool(draft: Draft, pool: PoolSpec, spare: bool, want: int,
              members: Sequence[NodeRecord] | None = None) -> None:
    """Grow or shrink the pool's nodes (or its spares) that count as capacity to `want`."""
    if members is None:
        members = [r for r in draft.records.values()
                   if r.pool == pool.name and r.spare == spare and r.state.counts_as_capacity]
    members = list(members)
    have = len(members)
    if have < want:
        promoted = promote_spares(draft, pool, want - have) if not spare else 0
        if want - have - promoted > 0:
            grow(draft, pool, want - have - promoted, spare)
    elif have > want:
        shrink(draft, pool, members, have - want, spare)


def promote_spares(draft: Draft, pool: PoolSpec, count: int) -> int:
    """Turn up to `count` ready hot spares into pool nodes (admitted in this pass): a
    replacement in about a second instead of a launch. Returns how many were promoted."""
    if not draft.spec.health.use_spares_first:
        return 0
    ready = sorted((r for r in draft.records.values()
                    if r.pool == pool.name and r.spare and r.state is S.READY), key=lambda r: r.instance)
    for record in ready[:count]:
        draft.records[record.instance] = dataclasses.replace(record, spare=False, reason="promoted from hot spare")
        draft.event("promote", f"hot spare {record.instance} joins pool {pool.name}", record,
                    reason="replacing capacity")
    return min(count, len(ready))


def grow(draft: Draft, pool: PoolSpec, count: int, spare: bool) -> None:
    """Launch up to `count` nodes (at most `upscaling_speed`), unless the pool is backing off."""
    failures, last = draft.failures.get(pool.name, (0, 0.0))
    if failures and draft.now - last < backoff_s(failures):
        return
    count = min(count, draft.spec.scaling.upscaling_speed)
    what = "hot spare" if spare else "node"
    for _ in range(count):
        number = draft.sequence.get(pool.name, 0) + 1
        draft.sequence[pool.name] = number
        name = instance_name(draft.spec.name, pool.name, number)
        record = NodeRecord(name, pool.name, S.REQUESTED, draft.now, f"launching {what}",
                            launched_at=draft.now, spare=spare, launch_attempts=1,
                            last_action_at=draft.now)
        draft.records[name] = record
        draft.actions.append(Launch(pool.name, name))
        draft.event("launch", f"launching {what} {name} for pool {pool.name}", record,
                    reason=growth_reason(draft, pool, spare))


def growth_reason(draft: Draft, pool: PoolSpec, spare: bool) -> str:
    """What asked for the launch: the spares, the autoscaler (when above the floor), or the floor."""
    if spare:
        return f"hot_spares={pool.hot_spares}"
    target = draft.autoscale.get(pool.name)
    if target is not None and target.nodes > desired_nodes(pool, draft.targets):
        return target.reason
    if pool.name in draft.targets:
        return f"manual target {draft.targets[pool.name]}"
    return f"spec nodes={pool.desired}"


def shrink(draft: Draft, pool: PoolSpec, members: list[NodeRecord], count: int, spare: bool) -> None:
    """Remove `count` nodes. An autoscaled pool gives up its idle nodes, longest idle first:
    its target never asks for more than those (busy nodes stay) unless max_nodes was lowered."""
    target = None if spare else draft.autoscale.get(pool.name)
    idle = dict(target.removable) if target else {}
    for record in _removal_order(draft, members, idle)[:count]:
        reason = _removal_reason(draft, pool, record, idle, spare)
        drained = bool(record.node_id and record.state is S.READY)
        if drained:
            draft.actions.append(Drain(pool.name, record.instance, record.node_id, reason,
                                       deadline_s=SCALE_DOWN_DRAIN_S, preemption=False))
        draft.move(record, S.TERMINATING, reason, last_action_at=draft.now)
        draft.actions.append(Terminate(pool.name, record.instance, reason))
        what = "removed, drain requested first" if drained else "removed"
        draft.event("scale", f"{record.instance} {what}: {reason}", record, reason=reason)


def _removal_order(draft: Draft, members: list[NodeRecord], idle: Mapping[str, float]) -> list[NodeRecord]:
    """The autoscaler's idle nodes, longest idle first; then the cheapest to lose: not yet
    started, then idle, then newest. Busy nodes last of all."""
    busy = draft.view.busy_nodes

    def cost(record: NodeRecord) -> tuple[int, int, float]:
        return (0 if record.state.starting else 1, 1 if record.node_id in busy else 0, -record.launched_at)

    newest_first = sorted(members, key=lambda record: record.instance, reverse=True)
    order = sorted(newest_first, key=cost)
    if idle:
        order = sorted((r for r in members if r.instance in idle), key=lambda r: (-idle[r.instance], r.instance)) \
            + [r for r in order if r.instance not in idle]
    return order


def _removal_reason(draft: Draft, pool: PoolSpec, record: NodeRecord, idle: Mapping[str, float],
                    spare: bool) -> str:
    if record.instance in idle:
        return (f"idle {idle[record.instance]:.0f}s over idle_timeout {idle_timeout_s(draft.spec, pool):g}s "
                f"(autoscale; floor {desired_nodes(pool, draft.targets)})")
    if spare:
        return f"hot_spares={pool.hot_spares}"
    return f"scale down to {draft.wants.get(pool.name, desired_nodes(pool, draft.targets))}"
