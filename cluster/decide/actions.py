"""What a plan asks the edge to do: the actions `act` applies through the provider and Ray.

Each is a value naming its pool and instance; the ones that touch a Ray node carry its id.
Applying any of them twice changes nothing (launches carry client tokens, terminations and
drains of what is already gone are done).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union


@dataclass(frozen=True)
class Launch:
    pool: str
    instance: str


@dataclass(frozen=True)
class Terminate:
    pool: str
    instance: str
    reason: str


@dataclass(frozen=True)
class Drain:
    pool: str
    instance: str
    node_id: str
    reason: str
    deadline_s: float   # seconds from now after which the node is force-stopped
    preemption: bool    # a drain Ray may not reject (failed node, notice) vs one for idle scale-down


@dataclass(frozen=True)
class Admit:
    """Give a node its CPUs: nodes join with none, so no work lands before it passed its checks."""

    pool: str
    instance: str
    node_id: str
    cpus: float


@dataclass(frozen=True)
class Evict:
    """Declare a node dead in the GCS: its actors fail and its placement groups move now, so a
    training job fails over at once instead of after Ray's own node timeout (measured: 13-17 s).
    Only for a node that is gone, or drained and being terminated."""

    pool: str
    instance: str
    node_id: str
    reason: str = ""
    preempted: bool = False   # the node went as announced: Ray Train charges its preemption budget


@dataclass(frozen=True)
class Unadmit:
    """Take a node's CPUs back: no new work lands (reversible, unlike Ray's drain)."""

    pool: str
    instance: str
    node_id: str


@dataclass(frozen=True)
class Vacate:
    """End the work on a node (its actors, except its health agent): jobs restart from their
    checkpoints elsewhere while the node stays up for diagnosis."""

    pool: str
    instance: str
    node_id: str
    reason: str


@dataclass(frozen=True)
class RunChecks:
    """Ask a node's agent to run its active checks (the matmul burn) and report at once."""

    pool: str
    instance: str


Action = Union[Launch, Terminate, Drain, Admit, Evict, Unadmit, Vacate, RunChecks]
