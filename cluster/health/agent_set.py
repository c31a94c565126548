"""The controller's side of health: one agent per joined node, and the reports they push.

Agents are started idempotently by name (`rayfleet-health-<instance>`, detached, pinned to their
node with NodeAffinitySchedulingStrategy(soft=False)), so a restarted controller finds the ones
already running. A report is stamped with the controller's own clock on receipt: that stamp is
the heartbeat the liveness policy reads.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable, Mapping

from rayfleet.cluster.health.agent import HealthAgent, agent_name
from rayfleet.cluster.health.checks import expected_tflops
from rayfleet.cluster.health.policy import link_check
from rayfleet.cluster.health.report import HealthReport
from rayfleet.cluster.spec.fleet import FleetSpec
from rayfleet.cluster.decide.state import NodeRecord, NodeState
from rayfleet.names import NAMESPACE

log = logging.getLogger("rayfleet.health")
WATCHED = (NodeState.READY, NodeState.SUSPECT, NodeState.DEGRADED, NodeState.UNHEALTHY, NodeState.DRAINING)


class AgentSet:
    def __init__(self) -> None:
        self.reports: dict[str, HealthReport] = {}
        self.handles: dict[str, tuple[str, Any]] = {}  # instance -> (node id, agent handle)
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="rayfleet-agents")

    def receive(self, report: Mapping[str, Any]) -> None:
        stamped = HealthReport.from_json({**report, "received_at": time.time()})
        with self._lock:
            known = self.reports.get(stamped.instance)
            if known is None or stamped.sequence > known.sequence or stamped.sent_at > known.sent_at:
                self.reports[stamped.instance] = stamped

    def snapshot(self, records: Mapping[str, NodeRecord]) -> dict[str, HealthReport]:
        """Reports of the nodes in `records`, from their current Ray node (not a previous raylet)."""
        with self._lock:
            return {name: report for name, report in self.reports.items()
                    if name in records and report.node_id == records[name].node_id}

    def ensure(self, spec: FleetSpec, records: Iterable[NodeRecord], controller: Any) -> None:
        """Start an agent on every watched node that has none; forget agents of nodes gone."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        pools = {pool.name: pool for pool in spec.pools}
        live = {}
        for record in records:
            if record.state not in WATCHED or record.node_id is None or record.pool not in pools:
                continue
            live[record.instance] = record
            known = self.handles.get(record.instance)
            if known is not None and known[0] == record.node_id:
                continue
            pool = pools[record.pool]
            try:
                handle = ray.remote(HealthAgent).options(
                    name=agent_name(record.instance), namespace=NAMESPACE, lifetime="detached",
                    get_if_exists=True, num_cpus=0, max_restarts=0,
                    scheduling_strategy=NodeAffinitySchedulingStrategy(record.node_id, soft=False),
                ).remote(record.instance, record.node_id, pool.gpus_per_node,
                         expected_tflops(pool.peak_tflops, pool.expected_tflops),
                         spec.health.model_dump_json(), controller)
                self.handles[record.instance] = (record.node_id, handle)
            except Exception as error:  # the node may be going away; the next loop tries again
                log.warning("could not start the health agent of %s: %s", record.instance, error)
        for instance in set(self.handles) - set(live):
            self.handles.pop(instance, None)
            with self._lock:
                self.reports.pop(instance, None)

    def agent(self, instance: str) -> Any:
        import ray

        return ray.get_actor(agent_name(instance), namespace=NAMESPACE)

    def link_test(self, spec: FleetSpec, pool: str, instances: list[str], elements: int = 1_000_000
                  ) -> dict[str, Any]:
        """The pool's ring all-reduce among its nodes' agents; stragglers named and reported."""
        import ray

        if len(instances) < 2:
            raise ValueError(f"pool {pool} has {len(instances)} ready node(s); the ring test needs two or more")
        agents = [self.agent(name) for name in instances]
        peers = ray.get([agent.ring_listen.remote() for agent in agents], timeout=60)
        results = ray.get([agent.ring_run.remote(rank, peers, elements) for rank, agent in enumerate(agents)],
                          timeout=300)
        # rank r measured the link out of rank r-1: credit each bandwidth to the sender
        bandwidth = {instances[(r["rank"] - 1) % len(instances)]: r["bandwidth"] for r in results}
        sums_ok = all(r["sum_ok"] for r in results)
        checks = {name: link_check(name, bandwidth, spec.health.straggler_fraction, sums_ok) for name in instances}
        ray.get([agent.set_link_check.remote(checks[name].to_json()) for name, agent in zip(instances, agents)],
                timeout=60)
        return {"pool": pool, "bandwidth": bandwidth, "sum_ok": sums_ok,
                "stragglers": sorted(name for name, check in checks.items() if check.status.value != "ok"),
                "checks": {name: check.to_json() for name, check in checks.items()}}
