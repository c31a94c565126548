"""The Kubernetes provider: the fleet is a KubeRay RayCluster; a pool is one of its worker groups.

KubeRay creates and names the pods, so an instance here is a worker pod (`Instance.id` is the pod
name) and the planner pairs new pods with its pending requests (`consume_request` in cluster/decide/adopt.py).
- `launch(pool, names)` raises the group's `replicas` by the names not asked for before, and
  records them in the RayCluster's annotation `rayfleet.io/requests` in the same write: replicas
  become the live pods plus the pending requests, and repeating a launch (a controller that
  crashed and relaunches after RELAUNCH_AFTER_S) asks for nothing more. Entries expire after
  twice the boot timeout, when the planner has long given up on a request with no pod.
- `terminate(names)` lists those pods in the group's `scaleStrategy.workersToDelete` and lowers
  `replicas` by as many: KubeRay deletes exactly them, not random pods. A requested name that has
  no pod yet (scaled away before KubeRay made it) is withdrawn: one replica less while the group
  still has requests KubeRay has not turned into pods.
- `cordon(instance)` marks the pod's Kubernetes node unschedulable (`kubectl cordon`), so the
  replacement of a node with a hardware failure does not land on the same machine; remediation
  calls it for hardware checks (XID, ECC), then terminates the pod.
- Notices: a worker pod on a cordoned node (the first step of `kubectl drain`, of a node upgrade
  or of a cluster autoscaler's scale-down) or one the eviction API has started to delete (its
  `DisruptionTarget` condition) is listed with a notice, as an EC2 spot interruption is: its jobs
  checkpoint, it is replaced and then ended by rayfleet. The rendered PodDisruptionBudget
  (`maxUnavailable: 0` on workers) makes a drain's evictions wait for that; rayfleet deletes the
  pod itself (through KubeRay), which a budget does not block. Cordoned nodes are read with one
  list call filtered on `spec.unschedulable`, so the cost does not grow with the cluster.
- Every RayCluster change is a JSON patch carrying the resourceVersion it was computed from: a
  concurrent writer (KubeRay updating status, another controller) makes it fail with 409 Conflict,
  and the change is recomputed from a fresh read.
- The kubernetes client is imported only here, on the first API call.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from typing import Any, Callable, Collection, Iterator, Mapping, Sequence

from rayfleet.errors import ProviderError
from rayfleet.cluster.render.k8s import RAY_API, settings
from rayfleet.cluster.spec.fleet import FleetSpec, KubernetesFleet, PoolSpec
from rayfleet.cluster.decide.view import Instance, InstanceStatus
from rayfleet.names import REQUESTS_ANNOTATION

log = logging.getLogger(__name__)

GROUP, VERSION = RAY_API.split("/")
CONFLICT_RETRIES = 8
"""Recompute-and-retry rounds on 409 Conflict before giving up (the next loop tries again)."""

# REQUESTS_ANNOTATION (rayfleet.names) holds the launch requests not yet expired, JSON
# {name: [pool, unix time]}: what makes `launch` idempotent.

TERMINATE_WAIT_S = 600.0
"""`terminate(wait=True)`: how long to wait for KubeRay to delete the pods."""


class KubernetesProvider:
    """Size one fleet's KubeRay worker groups and list their pods (see the module docstring)."""

    def __init__(self, spec: FleetSpec, api_client: Any = None, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.time) -> None:
        self.spec = spec
        self.settings: KubernetesFleet = settings(spec)
        self.namespace = self.settings.namespace
        self.cluster = spec.name
        self._api_client = api_client
        self._sleep = sleep
        self._clock = clock
        self._request_ttl_s = 2 * spec.scaling.boot_timeout_s

    @classmethod
    def from_runtime(cls, spec: FleetSpec, runtime: Mapping[str, Any]) -> KubernetesProvider:
        return cls(spec)

    # --- clients ------------------------------------------------------------------------------
    @property
    def api_client(self) -> Any:
        if self._api_client is None:
            from kubernetes import client, config

            if self.settings.kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
                config.load_incluster_config()  # the controller on the head pod: its ServiceAccount
                self._api_client = client.ApiClient()
            else:
                self._api_client = config.new_client_from_config(config_file=self.settings.kubeconfig,
                                                                 context=self.settings.context)
        return self._api_client

    def _custom(self) -> Any:
        from kubernetes import client

        return client.CustomObjectsApi(self.api_client)

    def _core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self.api_client)

    # --- the interface ------------------------------------------------------------------------
    def launch(self, pool: PoolSpec, names: Sequence[str]) -> list[Instance]:
        """Ask KubeRay for len(names) more pods than the group has live; the pods are named by
        KubeRay, so nothing is returned here: they show up in `instances()`."""
        if not names:
            return []

        def change(cluster: dict[str, Any], pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
            index, group = self._group(cluster, pool.name)
            requests = self._requests(cluster)
            new = [name for name in dict.fromkeys(names) if name not in requests]
            if not new:
                return []
            replicas = int(group.get("replicas", 0))
            wanted = min(replicas + len(new), int(group.get("maxReplicas", replicas + len(new))))
            requests.update({name: [pool.name, self._clock()] for name in new})
            log.info("pool %s: replicas %d -> %d for %s", pool.name, replicas, wanted, ", ".join(new))
            return _group_ops(index, pool.name, replicas=wanted) + [_requests_op(cluster, requests)]

        with self._errors(f"launch in pool {pool.name}"):
            self._update(change)
        return []

    def terminate(self, names: Sequence[str], wait: bool = False) -> None:
        if not names:
            return
        doomed = set(names)

        def change(cluster: dict[str, Any], pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
            by_name = {pod["metadata"]["name"]: pod for pod in pods}
            requests = self._requests(cluster)
            withdrawn = {name: requests.pop(name)[0] for name in doomed if name in requests and name not in by_name}
            ops: list[dict[str, Any]] = []
            for index, group in enumerate(cluster["spec"].get("workerGroupSpecs", [])):
                pool = group["groupName"]
                listed = _to_delete(group)
                mine = {n for n in doomed if n in by_name and _pool_of(by_name[n]) == pool}
                newly = {n for n in mine if n not in listed and not _deleting(by_name[n])}
                keep = {n for n in listed if n in by_name}  # prune names KubeRay already deleted
                to_delete = sorted(keep | mine)
                replicas = int(group.get("replicas", 0))
                live = len(self._live(pods, pool, set(to_delete)))
                outstanding = max(0, replicas - len(newly) - live)  # requests KubeRay has no pod for yet
                unborn = sum(1 for owner in withdrawn.values() if owner == pool)
                target = max(0, replicas - len(newly) - min(unborn, outstanding))
                if target == replicas and to_delete == sorted(listed):
                    continue
                log.info("pool %s: replicas %d -> %d, workersToDelete %s", pool, replicas, target, to_delete)
                ops += _group_ops(index, pool, replicas=target, workers_to_delete=to_delete)
            return ops + [_requests_op(cluster, requests)] if ops or withdrawn else []

        with self._errors("terminate"):
            self._update(change)
            if wait:
                self._wait_gone(doomed)

    def instances(self) -> list[Instance]:
        with self._errors("list pods"):
            pods = self._pods()
        with self._errors("list cordoned nodes"):
            cordoned = self._cordoned_nodes()
        return [_to_instance(pod, cordoned) for pod in pods]

    def cordon(self, instance: str) -> str | None:
        """Mark the Kubernetes node under pod `instance` unschedulable; its name, or None if the
        pod is gone or not scheduled. Idempotent, like `kubectl cordon`."""
        with self._errors(f"cordon the node of {instance}"):
            try:
                pod = self._core().read_namespaced_pod(instance, self.namespace, _preload_content=False)
            except Exception as error:
                if getattr(error, "status", None) == 404:
                    return None
                raise
            node = (_json(pod).get("spec") or {}).get("nodeName")
            if not node:
                return None
            self._core().patch_node(node, {"spec": {"unschedulable": True}},
                                    _content_type="application/merge-patch+json", _preload_content=False)
            log.warning("cordoned Kubernetes node %s (under %s): no new pods land there", node, instance)
            return str(node)

    # --- reading --------------------------------------------------------------------------------
    def _pods(self) -> list[dict[str, Any]]:
        response = self._core().list_namespaced_pod(
            self.namespace, label_selector=f"ray.io/cluster={self.cluster},ray.io/node-type=worker",
            _preload_content=False)
        return list(_json(response).get("items", []))

    def _cordoned_nodes(self) -> set[str]:
        response = self._core().list_node(field_selector="spec.unschedulable=true", _preload_content=False)
        return {str(node["metadata"]["name"]) for node in _json(response).get("items", [])}

    def _read_cluster(self) -> dict[str, Any]:
        try:
            return dict(self._custom().get_namespaced_custom_object(GROUP, VERSION, self.namespace,
                                                                    "rayclusters", self.cluster))
        except Exception as error:
            if getattr(error, "status", None) == 404:
                raise ProviderError(f"RayCluster {self.namespace}/{self.cluster} does not exist; create it with "
                                    f"`rayfleet render k8s -f FLEET.yaml -o DIR && kubectl apply -k DIR`") from None
            raise

    def _group(self, cluster: dict[str, Any], pool: str) -> tuple[int, dict[str, Any]]:
        for index, group in enumerate(cluster["spec"].get("workerGroupSpecs", [])):
            if group.get("groupName") == pool:
                return index, group
        raise ProviderError(f"RayCluster {self.namespace}/{self.cluster} has no worker group {pool!r}; "
                            "render and apply the fleet again (`rayfleet render k8s`)")

    def _live(self, pods: list[dict[str, Any]], pool: str, to_delete: set[str]) -> list[dict[str, Any]]:
        return [pod for pod in pods if _pool_of(pod) == pool and not _deleting(pod)
                and pod["metadata"]["name"] not in to_delete and _phase(pod) in ("Pending", "Running", "Unknown")]

    def _requests(self, cluster: Mapping[str, Any]) -> dict[str, list[Any]]:
        """The pending launch requests recorded on the RayCluster: name -> [pool, time asked]."""
        text = ((cluster.get("metadata") or {}).get("annotations") or {}).get(REQUESTS_ANNOTATION, "{}")
        try:
            recorded = dict(json.loads(text))
        except ValueError:
            recorded = {}
        oldest = self._clock() - self._request_ttl_s
        return {name: entry for name, entry in recorded.items() if float(entry[1]) >= oldest}

    # --- writing --------------------------------------------------------------------------------
    def _update(self, change: Callable[[dict[str, Any], list[dict[str, Any]]], list[dict[str, Any]]]) -> None:
        """Read, compute a JSON patch, apply it guarded by resourceVersion; on 409, again."""
        for attempt in range(CONFLICT_RETRIES):
            cluster = self._read_cluster()
            ops = change(cluster, self._pods())
            if not ops:
                return
            ops.append({"op": "replace", "path": "/metadata/resourceVersion",
                        "value": cluster["metadata"]["resourceVersion"]})
            try:
                self._custom().patch_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, "rayclusters", self.cluster, ops,
                    _content_type="application/json-patch+json")
                return
            except Exception as error:
                if getattr(error, "status", None) != 409:
                    raise
                log.info("RayCluster %s changed under us (409 Conflict): recomputing", self.cluster)
                self._sleep(min(0.05 * 2 ** attempt, 1.0))
        raise ProviderError(f"RayCluster {self.namespace}/{self.cluster}: still conflicting after "
                            f"{CONFLICT_RETRIES} tries; the next loop tries again")

    def _wait_gone(self, names: set[str]) -> None:
        deadline = time.monotonic() + TERMINATE_WAIT_S
        while time.monotonic() < deadline:
            if not names & {pod["metadata"]["name"] for pod in self._pods()}:
                return
            self._sleep(1.0)
        raise ProviderError(f"pods {sorted(names)} still exist after {TERMINATE_WAIT_S:.0f}s")

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """API and network failures become ProviderError (exit 1 at the CLI, logged by the loop)."""
        try:
            yield
        except ProviderError:
            raise
        except Exception as error:
            if not type(error).__module__.startswith(("kubernetes", "urllib3")):
                raise
            status = getattr(error, "status", None)
            reason = getattr(error, "reason", None) or type(error).__name__
            body = _status_message(getattr(error, "body", None))
            raise ProviderError(f"Kubernetes {what} for fleet {self.cluster} failed: "
                                f"{status or ''} {reason}{': ' + body if body else ''}".strip()) from None


# --- pure helpers ---------------------------------------------------------------------------------
def _requests_op(cluster: Mapping[str, Any], requests: Mapping[str, list[Any]]) -> dict[str, Any]:
    annotations = dict((cluster.get("metadata") or {}).get("annotations") or {})
    annotations[REQUESTS_ANNOTATION] = json.dumps(dict(sorted(requests.items())), separators=(",", ":"))
    return {"op": "add", "path": "/metadata/annotations", "value": annotations}


def _group_ops(index: int, pool: str, replicas: int,
               workers_to_delete: list[str] | None = None) -> list[dict[str, Any]]:
    path = f"/spec/workerGroupSpecs/{index}"
    ops: list[dict[str, Any]] = [{"op": "test", "path": f"{path}/groupName", "value": pool},
                                 {"op": "replace", "path": f"{path}/replicas", "value": replicas}]
    if workers_to_delete is not None:
        ops.append({"op": "add", "path": f"{path}/scaleStrategy", "value": {"workersToDelete": workers_to_delete}})
    return ops


def _to_delete(group: Mapping[str, Any]) -> set[str]:
    return set((group.get("scaleStrategy") or {}).get("workersToDelete") or [])


def _pool_of(pod: Mapping[str, Any]) -> str:
    return str(pod["metadata"].get("labels", {}).get("ray.io/group", ""))


def _deleting(pod: Mapping[str, Any]) -> bool:
    return bool(pod["metadata"].get("deletionTimestamp"))


def _phase(pod: Mapping[str, Any]) -> str:
    return str((pod.get("status") or {}).get("phase", "Pending"))


def _disruption(pod: Mapping[str, Any]) -> str:
    """Why Kubernetes is taking the pod away (the `DisruptionTarget` condition the eviction API,
    preemption and the taint manager set before deleting it), or ""."""
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "DisruptionTarget" and condition.get("status") == "True":
            return str(condition.get("reason") or "DisruptionTarget")
    return ""


def _to_instance(pod: Mapping[str, Any], cordoned: Collection[str] = ()) -> Instance:
    """A worker pod as an Instance: Pending -> pending, Running -> running, else terminated; a
    running pod being evicted, or on a cordoned node, is running with a notice."""
    meta, status = pod["metadata"], pod.get("status") or {}
    phase = _phase(pod)
    detail = ""
    disruption, node = _disruption(pod), (pod.get("spec") or {}).get("nodeName")
    if phase == "Running" and disruption:
        deadline = _timestamp(meta, "deletionTimestamp") or None
        return Instance(id=meta["name"], pool=_pool_of(pod), status=InstanceStatus.RUNNING,
                        launched_at=_timestamp(meta), provider_id=meta.get("uid"),
                        notice=f"Kubernetes evicts the pod ({disruption})", notice_deadline=deadline)
    if phase == "Running" and node in cordoned and not _deleting(pod):
        return Instance(id=meta["name"], pool=_pool_of(pod), status=InstanceStatus.RUNNING,
                        launched_at=_timestamp(meta), provider_id=meta.get("uid"),
                        notice=f"its Kubernetes node {node} is cordoned (a drain evicts it next)")
    if _deleting(pod):
        state, detail = InstanceStatus.TERMINATED, "pod is being deleted"
    elif phase == "Running":
        state = InstanceStatus.RUNNING
    elif phase in ("Succeeded", "Failed"):
        state = InstanceStatus.TERMINATED
        detail = f"pod {phase.lower()}: {status.get('reason') or ''} {status.get('message') or ''}".strip(": ")
    else:
        state = InstanceStatus.PENDING
        unscheduled = [c for c in status.get("conditions", []) if c.get("type") == "PodScheduled"
                       and c.get("status") == "False"]
        detail = unscheduled[0].get("message", "") if unscheduled else ""
    return Instance(id=meta["name"], pool=_pool_of(pod), status=state, launched_at=_timestamp(meta),
                    detail=detail, provider_id=meta.get("uid"))


def _timestamp(meta: Mapping[str, Any], field: str = "creationTimestamp") -> float:
    from datetime import datetime

    created = meta.get(field)
    if not created:
        return 0.0
    return datetime.fromisoformat(str(created).replace("Z", "+00:00")).timestamp()


def _json(response: Any) -> dict[str, Any]:
    return dict(json.loads(response.data))


def _status_message(body: Any) -> str:
    try:
        return str(json.loads(body).get("message", ""))
    except (TypeError, ValueError, AttributeError):
        return ""
