"""Ray's GCS as rayfleet reads and writes it: node table, KV store, drain requests.

All calls go through `ray._raylet.GcsClient` (what `ray status` and the autoscaler use): it needs
no driver, answers in about a millisecond and keeps the CLI fast. Ray is imported lazily so that
`rayfleet schema` and friends start instantly; token authentication must be configured in the
environment before the first import (see `cluster.connection.use_token`).
"""
from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

from rayfleet.cluster.decide.demand import Demand, demand_from_resource_state
from rayfleet.errors import FleetNotRunning
from rayfleet.cluster.decide.view import RayNode
from rayfleet.names import FLEET_LABEL, INSTANCE_LABEL, NAMESPACE as NAMESPACE_NAME, POOL_LABEL

NAMESPACE = NAMESPACE_NAME.encode()
ALIVE = 0  # GcsNodeInfo.GcsNodeState.ALIVE
DRAINING_STATE = 2  # NodeSnapshot.State.DRAINING


def reachable(address: str, timeout_s: float = 1.0) -> bool:
    """A TCP connect to the GCS port: milliseconds, where Ray's client waits 12-40 s on a dead one."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


def client(address: str, timeout_s: float = 10.0) -> Any:
    """A GCS client; FleetNotRunning at once when nothing listens at `address`."""
    if not reachable(address):
        raise FleetNotRunning(f"the Ray head at {address} does not answer; is the fleet up? "
                              "(`rayfleet up -f FLEET.yaml` starts it)")
    from ray._raylet import InnerGcsClient

    try:
        return InnerGcsClient.standalone(address, None, int(timeout_s * 1000))
    except Exception as error:  # ray raises its own RpcError; keep the CLI's message plain
        raise FleetNotRunning(f"the Ray head at {address} did not answer within {timeout_s:.0f}s ({error}); "
                              "`rayfleet status` checks the fleet, `rayfleet up -f FLEET.yaml` restarts it") from None


def read_nodes(gcs: Any, fleet: str | None = None, timeout_s: float = 5.0) -> tuple[RayNode, ...]:
    """Every Ray node the GCS knows (alive and recently dead), as RayNode values."""
    nodes = []
    for node_id, info in gcs.get_all_node_info(timeout=timeout_s).items():
        labels = dict(info.labels)
        if fleet is not None and labels.get(FLEET_LABEL, fleet) != fleet:
            continue
        resources = dict(info.resources_total)
        snapshot = info.state_snapshot
        nodes.append(RayNode(
            node_id=node_id.hex(),
            instance=labels.get(INSTANCE_LABEL),
            pool=labels.get(POOL_LABEL),
            alive=info.state == ALIVE,
            address=info.node_manager_address,
            draining=snapshot.state == DRAINING_STATE,
            idle_ms=int(snapshot.idle_duration_ms),
            death_reason=info.death_info.reason_message if info.HasField("death_info") else "",
            resources=resources,
            labels=labels,
            is_head="node:__internal_head__" in resources,
            port=int(info.node_manager_port),
        ))
    return tuple(nodes)


def read_demand(gcs: Any, timeout_s: float = 5.0) -> Demand:
    """Pending tasks, actors and placement groups, and live node usage (autoscaler v2's view)."""
    from ray.core.generated.autoscaler_pb2 import GetClusterResourceStateReply

    reply = GetClusterResourceStateReply()
    reply.ParseFromString(gcs.get_cluster_resource_state(timeout_s=timeout_s))
    return demand_from_resource_state(reply.cluster_resource_state)


def read_gang_nodes() -> frozenset[str]:
    """Ray node ids (hex) holding a bundle of a placed placement group: the gangs of training
    workers. The GCS's own table is current the moment a group is placed, where the raylets'
    usage reports that `read_demand` sees lag (about 0.2-0.4 s measured on Ray 2.60), so a node a
    gang just landed on is never mistaken for idle. Needs a Ray driver (the controller actor)."""
    import ray

    if not ray.is_initialized():
        raise RuntimeError("placement groups are read through a Ray driver; none in this process")
    nodes = set()
    for group in ray.util.placement_group_table().values():
        if group.get("state") in ("CREATED", "RESCHEDULING"):
            nodes.update(node for node in group.get("bundles_to_node_id", {}).values() if node)
    return frozenset(nodes)


@dataclass(frozen=True)
class MetricsEndpoint:
    """Where Prometheus scrapes one Ray node: its metrics agent's `metrics_export_port`."""

    node_id: str
    address: str
    port: int
    pool: str | None
    is_head: bool

    @property
    def target(self) -> str:
        return f"{self.address}:{self.port}"


def metrics_endpoints(gcs: Any, timeout_s: float = 5.0) -> list[MetricsEndpoint]:
    """Every alive node's Prometheus endpoint, head first (the controller's metrics are there)."""
    found = []
    for node_id, info in gcs.get_all_node_info(timeout=timeout_s).items():
        if info.state != ALIVE or not info.metrics_export_port:
            continue
        labels = dict(info.labels)
        found.append(MetricsEndpoint(node_id=node_id.hex(), address=info.node_manager_address,
                                     port=int(info.metrics_export_port), pool=labels.get(POOL_LABEL),
                                     is_head="node:__internal_head__" in dict(info.resources_total)))
    return sorted(found, key=lambda endpoint: (not endpoint.is_head, endpoint.pool or "", endpoint.port))


def kv_get(gcs: Any, key: str, timeout_s: float = 5.0) -> bytes | None:
    return gcs.internal_kv_get(key.encode(), NAMESPACE, timeout=timeout_s)


def kv_put(gcs: Any, key: str, value: str | bytes, timeout_s: float = 5.0) -> None:
    data = value.encode() if isinstance(value, str) else value
    gcs.internal_kv_put(key.encode(), data, True, NAMESPACE, timeout=timeout_s)


def kv_delete(gcs: Any, key: str, timeout_s: float = 5.0) -> None:
    gcs.internal_kv_del(key.encode(), False, NAMESPACE, timeout=timeout_s)


def drain(gcs: Any, node_id: str, message: str, deadline_s: float, preemption: bool,
          now_ms: int, timeout_s: float = 5.0) -> tuple[bool, str]:
    """Ask Ray to drain a node: no new work lands on it; running work has until the deadline.

    PREEMPTION drains cannot be rejected (a failing node must go); IDLE_TERMINATION drains are
    rejected by the raylet when the node is busy, which is what scale-down wants.
    """
    from ray.core.generated import autoscaler_pb2

    reason = autoscaler_pb2.DRAIN_NODE_REASON_PREEMPTION if preemption \
        else autoscaler_pb2.DRAIN_NODE_REASON_IDLE_TERMINATION
    deadline_ms = now_ms + int(deadline_s * 1000)
    # Ray 2.60 takes the hex id here (as resize_raylet_resource_instances does), not the binary one.
    accepted, rejection = gcs.drain_node(node_id.encode(), reason, message, deadline_ms, timeout=timeout_s)
    return bool(accepted), rejection or ""


def declare_dead(address: str, node_id: str, message: str, timeout_s: float = 5.0, preempted: bool = False) -> None:
    """Tell the GCS a node is gone, as its raylet does on a clean shutdown (UnregisterNode).

    Only for nodes rayfleet has proof of: their processes are gone, or they were drained and are
    being terminated. The GCS then fails the node's actors and reschedules its placement groups at
    once; left alone it waits for its own health-check timeout (measured here: 13-17 s), and Ray
    Train's restart waits behind the removal of the dead node's placement-group bundles.
    """
    import os

    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    request = gcs_service_pb2.UnregisterNodeRequest(node_id=bytes.fromhex(node_id))
    # A node that went as announced is a preemption: Ray Train then charges its preemption budget
    # (unlimited by default), not max_failures.
    request.node_death_info.reason = (request.node_death_info.AUTOSCALER_DRAIN_PREEMPTED if preempted
                                      else request.node_death_info.UNEXPECTED_TERMINATION)
    request.node_death_info.reason_message = message
    channel = grpc.insecure_channel(address)
    try:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        stub.UnregisterNode(request, timeout=timeout_s, metadata=auth_metadata(os.environ))
    finally:
        channel.close()


def auth_metadata(env: Any) -> list[tuple[str, str]]:
    """The token as Ray's gRPC servers expect it (`authorization: Bearer ...`), when auth is on."""
    token = env.get("RAY_AUTH_TOKEN")
    path = env.get("RAY_AUTH_TOKEN_PATH")
    if not token and path:
        with open(path) as handle:
            token = handle.read().strip()
    return [("authorization", f"Bearer {token}")] if token else []


def actors(gcs: Any, timeout_s: float = 5.0) -> Any:
    """The GCS actor table: actor id -> ActorTableData. (Its async call needs a running event loop,
    which the controller's loop thread does not have; this runs one.)"""
    import asyncio

    async def fetch() -> Any:
        return await gcs.async_get_all_actor_info(timeout=timeout_s)

    return asyncio.run(fetch())


def kv_keys(gcs: Any, prefix: str, timeout_s: float = 5.0) -> list[str]:
    return [key.decode() for key in gcs.internal_kv_keys(prefix.encode(), NAMESPACE, timeout=timeout_s)]


def kv_multi_get(gcs: Any, keys: list[str], timeout_s: float = 5.0) -> dict[str, bytes]:
    if not keys:
        return {}
    found = gcs.internal_kv_multi_get([key.encode() for key in keys], NAMESPACE, timeout=timeout_s)
    return {key.decode(): value for key, value in found.items()}


def kv_exists(gcs: Any, key: str, timeout_s: float = 5.0) -> bool:
    return bool(gcs.internal_kv_exists(key.encode(), NAMESPACE, timeout=timeout_s))
