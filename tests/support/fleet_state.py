"""What tests ask of a controller's remembered state (FleetState), whichever loop made it: the
simulator's, the provider harness's or the planner's own."""
from __future__ import annotations

from rayfleet.cluster.decide.state import FleetState, NodeState


def ready_count(state: FleetState, pool: str) -> int:
    """Ready nodes of `pool` that take work (hot spares not counted)."""
    return sum(r.state is NodeState.READY and not r.spare for r in state.in_pool(pool))
