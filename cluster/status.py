"""The status document: what `rayfleet status -o json` prints. Its shape is stable (see README).

{
  "fleet": str, "provider": str, "observed_at": float (unix time of the controller's last loop),
  "controller": {"loop_ms_p50": float, "loop_ms_max": float, "started_at": float, "loops": int},
  "pools": [{"name", "accelerator", "gpus_per_node", "desired", "ready", "starting", "unhealthy",
             "draining", "quarantined", "spares", "spares_ready", "min", "max", "gpus_ready"}],
  "nodes": [{"instance", "pool", "state", "node_id", "address", "since", "reason", "spare"}]
}
"""
from __future__ import annotations

from typing import Any, Mapping

from cluster.plan import desired_nodes
from cluster.spec import FleetSpec
from cluster.state import FleetState, NodeState

S = NodeState


def fleet_status(spec: FleetSpec, state: FleetState, targets: Mapping[str, int], now: float,
                 controller: Mapping[str, Any]) -> dict[str, Any]:
    pools = []
    for pool in spec.pools:
        members = state.in_pool(pool.name)
        workers = [r for r in members if not r.spare]
        spares = [r for r in members if r.spare]
        ready = sum(r.state is S.READY for r in workers)
        pools.append({
            "name": pool.name,
            "accelerator": pool.accelerator,
            "gpus_per_node": pool.gpus_per_node,
            "desired": desired_nodes(pool, targets),
            "ready": ready,
            "starting": sum(r.state.starting for r in workers),
            "unhealthy": sum(r.state in (S.UNHEALTHY, S.SUSPECT) for r in members),
            "degraded": sum(r.state is S.DEGRADED for r in members),
            "draining": sum(r.state in (S.DRAINING, S.TERMINATING) for r in members),
            "quarantined": sum(r.state is S.QUARANTINED for r in members),
            "spares": pool.hot_spares,
            "spares_ready": sum(r.state is S.READY for r in spares),
            "min": pool.min_nodes,
            "max": pool.max_nodes,
            "gpus_ready": ready * pool.gpus_per_node,
        })
    nodes = [{
        "instance": r.instance, "pool": r.pool, "state": r.state.value, "node_id": r.node_id,
        "address": r.address, "since": r.since, "reason": r.reason, "spare": r.spare,
    } for r in sorted(state.nodes.values(), key=lambda r: (r.pool, r.instance))]
    return {"fleet": spec.name, "provider": spec.provider, "observed_at": now,
            "controller": dict(controller), "pools": pools, "nodes": nodes}
