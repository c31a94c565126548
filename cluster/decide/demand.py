"""Ray's pending demand and live node usage, as plain values the planner can read.

Read from `get_cluster_resource_state()` (autoscaler v2's view: the GCS answers it from the
raylets' resource reports), which holds
- pending tasks and actors, grouped by shape: `pending_resource_requests`;
- pending placement groups, all-or-nothing gangs (how Ray Train asks for its workers):
  `pending_gang_resource_requests`, bundles with their label selectors in `bundle_selectors`;
- every node's live status, how long Ray has seen it idle, and its total and free resources:
  `node_states`.

Measured with Ray 2.60 (tests/cluster/decide/test_autoscale.py builds these messages; the real-Ray test
reads them): the node table's `state_snapshot.idle_duration_ms` is the value at registration and
never moves, so idle time comes from here, not from `get_all_node_info`. And any live actor makes
Ray call a node RUNNING ("Busy workers on node"), a 0-CPU one too: with a health agent pinned to
every node, Ray never reports one idle. So a node is busy when its resources are in use (a Ray
Train worker holds its bundle's CPU and GPU), and `IdleClock` times how long a node Ray calls
RUNNING has had nothing in use.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Iterable, Mapping

Resources = tuple[tuple[str, float], ...]
"""A resource vector as sorted (name, amount) pairs: hashable, so equal bundles group."""

RUNNING, IDLE, DRAINING = 1, 3, 4  # autoscaler.proto NodeStatus
LABEL_IN, LABEL_NOT_IN = 1, 2      # common.proto LabelSelectorOperator
STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


def resources(mapping: Mapping[str, float]) -> Resources:
    """A resource mapping as a sorted vector, zero amounts dropped."""
    return tuple(sorted((name, float(amount)) for name, amount in mapping.items() if amount))


@dataclass(frozen=True)
class LabelConstraint:
    """`key in values` (or `not in`, when `negate`), as Ray's LabelSelectorConstraint says."""

    key: str
    values: frozenset[str]
    negate: bool = False

    def matches(self, labels: Mapping[str, str]) -> bool:
        inside = labels.get(self.key) in self.values
        return not inside if self.negate else inside


@dataclass(frozen=True)
class Selector:
    """All constraints must hold (Ray's LabelSelector)."""

    constraints: tuple[LabelConstraint, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(constraint.matches(labels) for constraint in self.constraints)

    def __str__(self) -> str:
        return " and ".join(f"{c.key} {'not in' if c.negate else 'in'} ({', '.join(sorted(c.values))})"
                            for c in self.constraints) or "any node"


@dataclass(frozen=True)
class Bundle:
    """One unit of pending work: its resources and where it may run.

    `selectors` are alternatives in Ray's priority order (fallbacks): any one that matches a
    node's labels will do; none at all means any node.
    """

    resources: Resources
    selectors: tuple[Selector, ...] = ()
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Gangs repeat one bundle thousands of times and are grouped by it every loop: hash once.
        object.__setattr__(self, "_hash", hash((self.resources, self.selectors)))

    def __hash__(self) -> int:
        return self._hash

    def allowed_on(self, labels: Mapping[str, str]) -> bool:
        return not self.selectors or any(selector.matches(labels) for selector in self.selectors)


@dataclass(frozen=True)
class Gang:
    """A pending placement group: its bundles are placed all together or not at all."""

    name: str                    # the placement group id (hex), from Ray's `details`
    bundles: tuple[Bundle, ...]
    strategy: str = "PACK"       # PACK | SPREAD | STRICT_PACK | STRICT_SPREAD


@dataclass(frozen=True)
class NodeUsage:
    """One live Ray node as the resource view reports it."""

    node_id: str                 # hex, as RayNode.node_id
    busy: bool                   # resources in use (a training worker holds its bundle's CPU and GPU)
    idle_ms: int                 # how long it has been idle (Ray's count, or IdleClock's); 0 while busy
    available: Resources = ()    # what is free on it now


@dataclass(frozen=True)
class Demand:
    """What Ray could not place yet, and how its nodes are used."""

    tasks: tuple[tuple[Bundle, int], ...] = ()            # pending tasks and actors: shape, count
    gangs: tuple[Gang, ...] = ()                          # pending placement groups
    nodes: Mapping[str, NodeUsage] = field(default_factory=dict)

    @property
    def pending_bundles(self) -> int:
        return sum(count for _, count in self.tasks) + sum(len(gang.bundles) for gang in self.gangs)

    @cached_property
    def busy_nodes(self) -> frozenset[str]:
        return frozenset(node_id for node_id, usage in self.nodes.items() if usage.busy)


# --- from Ray's protobuf messages (duck-typed: no Ray import needed to read them) ---------------
def demand_from_resource_state(state: Any) -> Demand:
    """A ClusterResourceState (autoscaler.proto) as a Demand."""
    tasks = tuple((_bundle(item.request), int(item.count)) for item in state.pending_resource_requests
                  if item.count > 0)
    gangs = tuple(_gang(gang) for gang in state.pending_gang_resource_requests)
    nodes = {}
    for node in state.node_states:
        if node.status not in (RUNNING, IDLE, DRAINING):
            continue  # dead: the node table says so, and it holds nothing
        node_id = bytes(node.node_id).hex()
        available = dict(node.available_resources)
        nodes[node_id] = NodeUsage(node_id=node_id, busy=_in_use(dict(node.total_resources), available),
                                   idle_ms=int(node.idle_duration_ms) if node.status == IDLE else 0,
                                   available=resources(available))
    return Demand(tasks=tasks, gangs=gangs, nodes=nodes)


def _in_use(total: Mapping[str, float], available: Mapping[str, float]) -> bool:
    """Any resource taken, but the object store (objects are cached anywhere) and `node:<ip>`."""
    return any(available.get(name, 0.0) < amount - 1e-9 for name, amount in total.items()
               if name != "object_store_memory" and not name.startswith("node:"))


class IdleClock:
    """How long each node has had nothing in use, by the controller's clock, for nodes Ray itself
    calls RUNNING because an actor of ours lives there. Kept by the controller between loops (the
    planner stays pure: it receives the result in the view); a restarted controller starts every
    clock afresh, which only delays scale-down."""

    def __init__(self) -> None:
        self.since: dict[str, float] = {}

    def update(self, demand: Demand, now: float) -> Demand:
        since = {}
        nodes = {}
        for node_id, usage in demand.nodes.items():
            if usage.busy:
                nodes[node_id] = usage
                continue
            since[node_id] = self.since.get(node_id, now)
            counted = int((now - since[node_id]) * 1000)
            nodes[node_id] = dataclasses.replace(usage, idle_ms=max(usage.idle_ms, counted))
        self.since = since
        return dataclasses.replace(demand, nodes=nodes)


def _bundle(request: Any) -> Bundle:
    return Bundle(resources=resources(dict(request.resources_bundle)),
                  selectors=tuple(_selector(selector) for selector in request.label_selectors))


def _selector(selector: Any) -> Selector:
    return Selector(tuple(
        LabelConstraint(key=item.label_key, values=frozenset(item.label_values),
                        negate=item.operator == LABEL_NOT_IN)
        for item in selector.label_constraints))


def _gang(gang: Any) -> Gang:
    # Ray fills `bundle_selectors` (with the label selectors) and keeps `requests` as the legacy
    # copy without them; autoscaler v2's scheduler reads the first selector group the same way.
    requests = gang.bundle_selectors[0].resource_requests if gang.bundle_selectors else gang.requests
    name, strategy = _details(gang.details)
    if strategy not in STRATEGIES:
        strategy = _strategy_from_constraints(requests)
    return Gang(name=name, bundles=tuple(_bundle(request) for request in requests), strategy=strategy)


def _details(details: str) -> tuple[str, str]:
    """'<placement group id>:PACK|PENDING' -> (id, strategy), as GcsPlacementGroup writes it."""
    name, _, rest = details.partition(":")
    return name, rest.partition("|")[0]


def _strategy_from_constraints(requests: Iterable[Any]) -> str:
    for request in requests:
        for constraint in request.placement_constraints:
            if constraint.HasField("anti_affinity"):
                return "STRICT_SPREAD"
            if constraint.HasField("affinity"):
                return "STRICT_PACK"
    return "PACK"
