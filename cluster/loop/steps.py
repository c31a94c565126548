"""Work that rides on the controller's loop without the controller knowing what it is.

The controller reconciles the fleet and nothing else. Other parts plug steps into its loop: the
CLI's `up` hands `start_controller` the step classes to run (job supervision is
`rayfleet.jobs.supervision.step.JobSupervision`), Ray keeps them with the actor's creation
arguments, so a restarted controller runs them again. A step:

- may tell the planner, before it plans, which noticed nodes may go now (`acknowledged`): a node
  under a preemption notice is drained once every job on it has checkpointed for the notice;
- runs after the pass has acted (`after`), seeing what the pass observed and decided, and may
  record events; it never changes the fleet.

A step runs in the controller's process with the controller's GCS client. Its failures are
logged and skipped: a step can never stop the fleet from being reconciled.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, Sequence

from rayfleet.cluster.decide.events import Event
from rayfleet.cluster.decide.state import FleetState
from rayfleet.cluster.spec.fleet import FleetSpec


@dataclass(frozen=True, slots=True)
class Pass:
    """What one reconcile pass saw and decided, as a step reads it."""

    spec: FleetSpec
    state: FleetState
    events: Sequence[Event]              # the decisions of this pass
    notices: Mapping[str, float]         # node id -> deadline of the notice it is under
    now: float
    runtime: Mapping[str, Any]           # where the fleet lives (the store's `runtime`: storage, dashboard_url)
    client: Any                          # the GCS client (KV store, actor table)
    agent: Callable[[str], Any]          # node id -> its health agent's handle, or None
    record: Callable[[Sequence[Event]], None]   # append events to the fleet's event log


class LoopStep(Protocol):
    """A step constructed once per controller (with no arguments) and called every pass."""

    def acknowledged(self, client: Any, runtime: Mapping[str, Any], notices: Mapping[str, float]) -> frozenset[str]:
        """Noticed node ids whose work is ready for them to go (read before planning)."""

    def after(self, done: Pass) -> None:
        """Run after the pass has acted."""
