"""The status document: what `rayfleet status -o json` prints. Its shape is stable (see README).

{
  "fleet": str, "provider": str, "observed_at": float (unix time of the controller's last loop),
  "controller": {"loop_ms_p50": float, "loop_ms_max": float, "started_at": float, "loops": int},
  "pools": [{"name", "accelerator", "gpus_per_node", "desired", "ready", "starting", "unhealthy",
             "draining", "quarantined", "spares", "spares_ready", "min", "max", "gpus_ready",
             "floor", "autoscale", "autoscale_target", "pending_bundles", "unplaced_bundles",
             "autoscale_reason"}],
  "nodes": [{"instance", "pool", "state", "node_id", "address", "since", "reason", "spare", "admitted"}],
  "gpu_hours": {pool or "all": {state: hours}}, "pending": [pending gangs and where they could run],
  "pool_failures": {pool: {"count", "last"}}
}
`rayfleet status` adds what it reads at its own time: "age_s", "dashboard_url", "head".

The health document (`rayfleet health -o json`): {"observed_at", "nodes": [{"instance", "pool",
"state", "heartbeat_age_s", "probe", "simulated", "checks": [{"name", "status", "message", "value",
"threshold", "hardware"}]}]}
"""
from __future__ import annotations

from typing import Any, Mapping

from rayfleet.cluster.decide.autoscale import PoolTarget, autoscales, pending_report
from rayfleet.cluster.decide.demand import Demand
from rayfleet.cluster.decide.usage import gpu_hours
from rayfleet.cluster.health.report import HealthReport
from rayfleet.cluster.decide.plan import desired_nodes
from rayfleet.cluster.spec.fleet import FleetSpec
from rayfleet.cluster.decide.state import FleetState, NodeState
from rayfleet.cluster.decide.view import Probe

S = NodeState


def fleet_status(spec: FleetSpec, state: FleetState, targets: Mapping[str, int], now: float,
                 controller: Mapping[str, Any], autoscale: Mapping[str, PoolTarget] | None = None,
                 usage: Mapping[str, Mapping[str, float]] | None = None, demand: Demand | None = None,
                 ) -> dict[str, Any]:
    """The whole document as the controller stores it each pass (`rayfleet status` adds only what
    it reads at its own time: age_s, dashboard_url, head).

    `desired` is the size the planner works toward: the floor (manual target, else spec) raised
    by the autoscaler's target; `autoscale_target` is null for pools that do not autoscale.
    `usage` is GPU-seconds by pool and state (cluster/decide/usage.py), `demand` Ray's pending
    demand as the pass observed it."""
    pools = []
    by_pool: dict[str, list] = {pool.name: [] for pool in spec.pools}
    for record in state.nodes.values():
        by_pool.setdefault(record.pool, []).append(record)
    for pool in spec.pools:
        members = by_pool[pool.name]
        target = (autoscale or {}).get(pool.name)
        workers = [r for r in members if not r.spare]
        spares = [r for r in members if r.spare]
        # ready: joined, passing (or only warning on) its checks, and admitted to take work
        ready = sum(r.state in (S.READY, S.DEGRADED) and r.admitted for r in workers)
        pools.append({
            "name": pool.name,
            "accelerator": pool.accelerator,
            "gpus_per_node": pool.gpus_per_node,
            "desired": desired_nodes(pool, targets, target.nodes if target else None),
            "ready": ready,
            "starting": sum(r.state.starting or (r.state is S.READY and not r.admitted) for r in workers),
            "unhealthy": sum(r.state in (S.UNHEALTHY, S.SUSPECT) for r in members),
            "degraded": sum(r.state is S.DEGRADED for r in members),
            "draining": sum(r.state in (S.DRAINING, S.TERMINATING) for r in members),
            "quarantined": sum(r.state is S.QUARANTINED for r in members),
            "spares": pool.hot_spares,
            "spares_ready": sum(r.state is S.READY for r in spares),
            "min": pool.min_nodes,
            "max": pool.max_nodes,
            "gpus_ready": ready * pool.gpus_per_node,
            "floor": desired_nodes(pool, targets),
            "autoscale": autoscales(spec, pool),
            "autoscale_target": target.nodes if target else None,
            "pending_bundles": target.pending_bundles if target else 0,
            "unplaced_bundles": target.unplaced_bundles if target else 0,
            "autoscale_reason": target.reason if target else "",
        })
    nodes = [{
        "instance": r.instance, "pool": r.pool, "state": r.state.value, "node_id": r.node_id,
        "address": r.address, "since": r.since, "reason": r.reason, "spare": r.spare, "admitted": r.admitted,
    } for r in sorted(state.nodes.values(), key=lambda r: (r.pool, r.instance))]
    return {"fleet": spec.name, "provider": spec.provider, "observed_at": now,
            "controller": dict(controller), "pools": pools, "nodes": nodes,
            "gpu_hours": gpu_hours(usage or {}), "pending": pending_report(spec, demand),
            "pool_failures": {pool: {"count": count, "last": last}
                              for pool, (count, last) in state.pool_failures.items()}}


def health_document(state: FleetState, reports: Mapping[str, HealthReport], probes: Mapping[str, Probe],
                    now: float) -> dict[str, Any]:
    """Per node, per check: what `rayfleet health` prints."""
    nodes = []
    for record in sorted(state.nodes.values(), key=lambda r: (r.pool, r.instance)):
        report = reports.get(record.instance)
        probe = probes.get(record.instance)
        nodes.append({
            "instance": record.instance, "pool": record.pool, "state": record.state.value,
            "spare": record.spare, "admitted": record.admitted, "reason": record.reason,
            "heartbeat_age_s": round(now - report.received_at, 2) if report else None,
            "probe": probe.value if probe else None,
            "simulated": report.simulated if report else None,
            "checks": [check.to_json() for check in report.checks] if report else [],
        })
    return {"observed_at": now, "nodes": nodes}
