"""Demand-based pool sizing: a pure policy from Ray's pending demand to per-pool node targets.

For each pool that autoscales (`pools[].autoscale`, default `scaling.autoscale`):
1. home each pending bundle on a pool: its label selector must match the labels the pool's nodes
   carry and it must fit the pool's node shape; work that asks for no GPU prefers pools without
   GPUs (as Ray's autoscaler conserves GPU nodes, AUTOSCALER_CONSERVE_GPU_NODES). A gang
   (placement group) is homed whole on one pool;
2. bin-pack it, first fit by decreasing size, onto what the pool already has: the free resources
   of its ready nodes, the full shape of nodes still starting (they will be empty when they join),
   then onto new nodes, up to max_nodes. A gang is placed all together or not at all
   (STRICT_SPREAD: one bundle per node; STRICT_PACK: all on one node);
3. a ready node idle for the pool's idle timeout, and not busy, is removable unless the packing
   needed it. Idle time is Ray's `idle_duration_ms`, but no longer than the node has been ready:
   Ray counts from the raylet's start, and a node that has just joined may be about to get the
   very work it was launched for.

The target is what the pool needs now: its nodes minus the removable ones plus the new ones.
`scaling.desired_nodes` combines it with the floor (manual target or spec) and max_nodes. Pure:
demand and usage arrive in the ClusterView, time as `now`.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from rayfleet.cluster.decide.demand import Bundle, Demand, Gang, NodeUsage
from rayfleet.cluster.render.ray_node import pool_labels, pool_resources
from rayfleet.cluster.spec.fleet import FleetSpec, PoolSpec
from rayfleet.cluster.decide.state import NodeRecord, NodeState

Vector = tuple[float, ...]
EPSILON = 1e-9  # summed fractions (0.1 * 3) must still fit a node of 0.3


@dataclass(frozen=True)
class PoolTarget:
    """One pool's autoscaling decision, with its reason."""

    pool: str
    nodes: int                                   # what the pool needs now (before floor and max)
    new_nodes: int = 0                           # of which not launched yet, for pending demand
    removable: tuple[tuple[str, float], ...] = ()  # (instance, idle seconds), longest idle first
    pending_bundles: int = 0                     # pending bundles homed on this pool
    unplaced_bundles: int = 0                    # of those, what would not fit even at max_nodes
    reason: str = ""


def autoscales(spec: FleetSpec, pool: PoolSpec) -> bool:
    return spec.scaling.autoscale if pool.autoscale is None else pool.autoscale


def idle_timeout_s(spec: FleetSpec, pool: PoolSpec) -> float:
    return spec.scaling.idle_timeout_s if pool.idle_timeout_s is None else pool.idle_timeout_s


def node_shape(pool: PoolSpec) -> dict[str, float]:
    """The Ray resources one node of the pool advertises (see cluster/render/ray_node.py)."""
    shape = {"CPU": float(pool.cpus_per_node), "memory": float(pool.memory), **pool_resources(pool)}
    if pool.gpus_per_node:
        shape["GPU"] = float(pool.gpus_per_node)
    return shape


def autoscale_targets(spec: FleetSpec, members: Mapping[str, Sequence[NodeRecord]],
                      demand: Demand | None, busy: frozenset[str] = frozenset(),
                      now: float = math.inf) -> dict[str, PoolTarget]:
    """Targets for every autoscaled pool. `members`: each pool's non-spare records that count as
    capacity. With `demand` None (Ray did not answer) every pool holds its size: nothing is
    launched for demand it cannot see, nothing removed as idle on stale figures."""
    pools = [pool for pool in spec.pools if autoscales(spec, pool)]
    if demand is None:
        return {pool.name: PoolTarget(pool.name, len(members.get(pool.name, ())),
                                      reason="holding: Ray's pending demand could not be read")
                for pool in pools}
    shapes = {pool.name: _Shape(node_shape(pool)) for pool in pools}
    labels = {pool.name: pool_labels(spec.name, pool) for pool in pools}
    gangs: dict[str, list[Gang]] = {pool.name: [] for pool in pools}
    tasks: dict[str, list[tuple[Bundle, int]]] = {pool.name: [] for pool in pools}
    for gang in demand.gangs:
        home = _home(gang.bundles, pools, shapes, labels)
        if home is not None:
            gangs[home].append(gang)
    for bundle, count in demand.tasks:
        home = _home((bundle,), pools, shapes, labels)
        if home is not None:
            tasks[home].append((bundle, count))
    return {pool.name: _size(spec, pool, shapes[pool.name], members.get(pool.name, ()), demand, busy, now,
                             gangs[pool.name], tasks[pool.name])
            for pool in pools}


# --- homing -------------------------------------------------------------------------------------
class _Shape:
    """A pool's node shape, and bundles turned into vectors over its resource names."""

    def __init__(self, shape: Mapping[str, float]) -> None:
        self.keys = tuple(sorted(shape))
        self.full: Vector = tuple(shape[key] for key in self.keys)
        self.has_gpu = shape.get("GPU", 0) > 0
        self._free: dict[tuple[tuple[str, float], ...], Vector] = {}  # nodes share few free vectors

    def vector(self, pairs: Iterable[tuple[str, float]]) -> Vector | None:
        """The bundle over this shape's resources; None if it asks for one the node lacks."""
        amounts = dict.fromkeys(self.keys, 0.0)
        for name, amount in pairs:
            if name not in amounts:
                return None  # e.g. CPU_group_<pg> (already reserved), node:<ip>, another accelerator
            amounts[name] = amount
        return tuple(amounts[key] for key in self.keys)

    def free(self, usage: NodeUsage | None) -> Vector:
        if usage is None:
            return self.full  # joined but not reported yet: empty
        vector = self._free.get(usage.available)
        if vector is None:
            available = dict(usage.available)
            vector = self._free[usage.available] = tuple(available.get(key, 0.0) for key in self.keys)
        return vector


def _home(bundles: Sequence[Bundle], pools: Sequence[PoolSpec], shapes: Mapping[str, _Shape],
          labels: Mapping[str, Mapping[str, str]]) -> str | None:
    """The first pool every bundle may run on and fits; CPU-only work tries CPU pools first."""
    distinct = set(bundles)  # a gang is usually one shape many times (Ray Train: one per worker)
    wants_gpu = any(name == "GPU" for bundle in distinct for name, _ in bundle.resources)
    ordered = sorted(pools, key=lambda pool: 0 if wants_gpu or not shapes[pool.name].has_gpu else 1)
    for pool in ordered:
        shape = shapes[pool.name]
        if all(bundle.allowed_on(labels[pool.name]) and _fits_once(shape, bundle) for bundle in distinct):
            return pool.name
    return None


def _fits_once(shape: _Shape, bundle: Bundle) -> bool:
    vector = shape.vector(bundle.resources)
    return vector is not None and _fits(shape.full, vector) >= 1


# --- sizing one pool ----------------------------------------------------------------------------
def _size(spec: FleetSpec, pool: PoolSpec, shape: _Shape, members: Sequence[NodeRecord], demand: Demand,
          busy: frozenset[str], now: float, gangs: Sequence[Gang], tasks: Sequence[tuple[Bundle, int]]
          ) -> PoolTarget:
    timeout_s = idle_timeout_s(spec, pool)
    kept: list[Vector] = []
    idle: list[tuple[str, float]] = []
    for record in members:
        usage = demand.nodes.get(record.node_id or "")
        idle_s = min(usage.idle_ms / 1000, now - record.since) if usage is not None else 0.0
        if record.state.starting or (record.state is NodeState.READY and not record.admitted):
            kept.append(shape.full)  # empty when it joins, or once admitted (nodes join with no CPUs)
        elif record.state is not NodeState.READY or record.node_id is None:
            kept.append(tuple(0.0 for _ in shape.keys))  # suspect or degraded: kept, given no work
        elif usage is not None and not usage.busy and record.node_id not in busy and idle_s >= timeout_s:
            idle.append((record.instance, idle_s))
        else:
            kept.append(shape.free(usage))
    idle.sort(key=lambda item: (-item[1], item[0]))
    packer = _Packer(shape.full, kept, len(idle), room=max(0, pool.max_nodes - len(members)))
    pending = unplaced = placed_gangs = 0
    for gang in sorted(gangs, key=lambda g: (-len(g.bundles), g.name)):
        pending += len(gang.bundles)
        vectors: Counter[Vector] = Counter()
        for bundle, count in Counter(gang.bundles).items():
            vector = shape.vector(bundle.resources)
            if vector is not None:  # always: the gang was homed here because every bundle fits
                vectors[vector] += count
        if packer.place_gang(vectors, gang.strategy):
            placed_gangs += 1
        else:
            unplaced += len(gang.bundles)
    for vector, count in _largest_first(shape, tasks):
        pending += count
        unplaced += count - packer.place(vector, count)
    removable = tuple(idle[: len(idle) - packer.idle_used])
    nodes = len(members) - len(removable) + packer.new_nodes
    return PoolTarget(pool.name, nodes, packer.new_nodes, removable, pending, unplaced,
                      _reason(pool, packer.new_nodes, removable, pending, unplaced, placed_gangs, timeout_s))


def _largest_first(shape: _Shape, tasks: Sequence[tuple[Bundle, int]]) -> list[tuple[Vector, int]]:
    counts: dict[Vector, int] = {}
    for bundle, count in tasks:
        vector = shape.vector(bundle.resources)
        if vector is not None:
            counts[vector] = counts.get(vector, 0) + count
    return sorted(counts.items(), key=lambda item: (-_size_of(item[0], shape.full), item[0]))


def _size_of(vector: Vector, full: Vector) -> float:
    return max((need / total for need, total in zip(vector, full) if total), default=0.0)


def _reason(pool: PoolSpec, new: int, removable: Sequence[tuple[str, float]], pending: int, unplaced: int,
            gangs: int, timeout_s: float) -> str:
    parts = []
    if new:
        parts.append(f"{pending - unplaced} pending bundle(s) ({gangs} gang(s)) need {new} more node(s)")
    if unplaced:
        parts.append(f"{unplaced} pending bundle(s) do not fit even at max_nodes={pool.max_nodes}")
    if removable:
        parts.append(f"{len(removable)} node(s) idle over idle_timeout {timeout_s:g}s")
    return "autoscale: " + ("; ".join(parts) if parts else "no pending demand, nothing idle")


# --- bin-packing --------------------------------------------------------------------------------
def _fits(free: Vector, need: Vector) -> int:
    """How many copies of `need` fit into `free`."""
    most = math.inf
    for have, want in zip(free, need):
        if want > 0:
            most = min(most, math.floor(have / want + EPSILON))
    return 0 if most == math.inf else int(most)  # a bundle asking for nothing needs no node


def _minus(free: Vector, need: Vector, copies: int) -> Vector:
    return tuple(have - want * copies for have, want in zip(free, need))


KEPT, IDLE, NEW = "kept", "idle", "new"


class _Packer:
    """First fit over groups of identical nodes (free vector, count, kind): a fleet of thousands
    of nodes is a handful of groups, so packing costs groups x bundle shapes, not nodes x bundles.
    An idle node that takes work is no longer removable (`idle_used`)."""

    def __init__(self, full: Vector, kept: Sequence[Vector], idle: int, room: int) -> None:
        self.full = full
        self.room = room
        self.new_nodes = 0
        self.idle_used = 0
        groups: dict[tuple[Vector, str], int] = {}
        for vector in kept:
            groups[(vector, KEPT)] = groups.get((vector, KEPT), 0) + 1
        if idle:
            groups[(full, IDLE)] = idle
        self.groups: list[list] = [[vector, count, kind, False] for (vector, kind), count in groups.items()]

    def place(self, need: Vector, count: int, spread: bool = False) -> int:
        """Place up to `count` copies; returns how many found room (existing, then new nodes).
        `spread`: at most one per node, and not on nodes this gang already uses (STRICT_SPREAD)."""
        if not any(need):
            return count  # asks for nothing: needs no node
        left = count
        out: list[list] = []
        for free, nodes, kind, touched in self.groups:
            each = 0 if spread and touched else _fits(free, need)
            each = min(each, 1) if spread else each
            if not left or not each:
                out.append([free, nodes, kind, touched])
                continue
            full_nodes = min(nodes, left // each)
            if full_nodes:
                out.append([_minus(free, need, each), full_nodes, self._used(kind, full_nodes), spread])
                left -= full_nodes * each
            rest = nodes - full_nodes
            if rest and 0 < left < each:
                out.append([_minus(free, need, left), 1, self._used(kind, 1), spread])
                rest, left = rest - 1, 0
            if rest:
                out.append([free, rest, kind, touched])
        each = min(_fits(self.full, need), 1 if spread else math.inf)
        if left and each:
            nodes = min(self.room - self.new_nodes, math.ceil(left / each))
            full_nodes = min(nodes, left // each)
            if full_nodes:
                out.append([_minus(self.full, need, each), full_nodes, NEW, spread])
            if nodes > full_nodes:
                out.append([_minus(self.full, need, left - full_nodes * each), 1, NEW, spread])
            self.new_nodes += nodes
            left = max(0, left - nodes * each)
        self.groups = self._merge(out)
        return count - left

    def place_gang(self, bundles: Mapping[Vector, int], strategy: str) -> bool:
        """All bundles or none: on failure the packer is left as it was."""
        saved = ([list(group) for group in self.groups], self.new_nodes, self.idle_used)
        ok = self._place_gang(bundles, strategy)
        self.groups = self._merge([[free, nodes, kind, False] for free, nodes, kind, _ in self.groups])
        if not ok:
            self.groups, self.new_nodes, self.idle_used = saved
        return ok

    def _place_gang(self, bundles: Mapping[Vector, int], strategy: str) -> bool:
        """`bundles`: each distinct bundle vector and how many of it the gang has."""
        if not bundles:
            return True
        if strategy == "STRICT_PACK":
            total = tuple(sum(amount * count for amount, count in zip(amounts, bundles.values()))
                          for amounts in zip(*bundles))
            return self.place(total, 1) == 1
        spread = strategy == "STRICT_SPREAD"
        for vector, count in sorted(bundles.items(), key=lambda item: (-_size_of(item[0], self.full), item[0])):
            if self.place(vector, count, spread) < count:
                return False
        return True

    def _used(self, kind: str, nodes: int) -> str:
        if kind == IDLE:
            self.idle_used += nodes
            return KEPT
        return kind

    @staticmethod
    def _merge(groups: list[list]) -> list[list]:
        merged: dict[tuple[Vector, str, bool], int] = {}
        for free, nodes, kind, touched in groups:
            key = (tuple(round(x, 9) for x in free), kind, touched)
            merged[key] = merged.get(key, 0) + nodes
        return [[free, nodes, kind, touched] for (free, kind, touched), nodes in merged.items()]


# --- explaining pending work (rayfleet explain) --------------------------------------------------
def pending_report(spec: FleetSpec, demand: Demand | None, limit: int = 50) -> list[dict[str, object]]:
    """Each pending gang (and pending task shape) with where it could run: for every pool, whether
    its labels allow the work and whether one node of its shape holds a bundle. The same homing
    and fitting the autoscaler uses (`_home`, `_fits_once`), over every pool, autoscaled or not."""
    if demand is None:
        return []
    shapes = {pool.name: _Shape(node_shape(pool)) for pool in spec.pools}
    labels = {pool.name: pool_labels(spec.name, pool) for pool in spec.pools}
    out: list[dict[str, object]] = []
    work = [(gang.name, gang.bundles, gang.strategy) for gang in demand.gangs]
    work += [("tasks", (bundle,) * count, "") for bundle, count in demand.tasks]
    for name, bundles, strategy in work[:limit]:
        distinct = list(dict.fromkeys(bundles))
        pools = {}
        for pool in spec.pools:
            if not all(bundle.allowed_on(labels[pool.name]) for bundle in distinct):
                pools[pool.name] = "its labels do not match the bundles' selectors"
            elif not all(_fits_once(shapes[pool.name], bundle) for bundle in distinct):
                pools[pool.name] = f"a bundle does not fit its node shape {show_resources(node_shape(pool))}"
            else:
                pools[pool.name] = "fits"
        out.append({"gang": name, "bundles": len(bundles), "strategy": strategy,
                    "resources": [dict(bundle.resources) for bundle in distinct],
                    "shapes": [show_resources(dict(bundle.resources)) for bundle in distinct],
                    "selectors": sorted({str(selector) for bundle in distinct for selector in bundle.selectors}),
                    "home": _home(bundles, spec.pools, shapes, labels), "pools": pools})
    return out


def show_resources(resources: Mapping[str, float]) -> str:
    """{CPU: 8, GPU: 8}: a bundle or node shape as people read it (no zero amounts)."""
    return "{" + ", ".join(f"{key}: {value:g}" for key, value in sorted(resources.items()) if value) + "}"
