"""The fake API server: HTTP on 127.0.0.1, objects in memory, KubeRay emulated (see __init__.py)."""
from __future__ import annotations

import copy
import datetime
import json
import random
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import parse_qs, urlparse

import yaml

from tests.support.fake_kube import kuberay
from tests.support.fake_kube.patches import PatchFailed, json_patch, merge_patch
from tests.support.fake_kube.schemas import Invalid, validate_core, validate_custom
from tests.support.loopback_http import LoopbackServer, QuietHandler

Key = tuple[str, str, str]   # (plural, namespace or "", name)
CUSTOM = {("ray.io", "rayclusters"), ("ray.io", "rayjobs")}
KINDS = {"rayclusters": "RayCluster", "rayjobs": "RayJob", "pods": "Pod", "nodes": "Node"}
RBAC_VERB = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def status(self) -> dict[str, Any]:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "code": self.code}


FIELD_SELECTORS = {"nodes": {"metadata.name", "spec.unschedulable"}, "pods": {"metadata.name", "spec.nodeName"}}
"""The field selectors the real API server accepts for these kinds (a subset of them)."""


def _field(obj: Mapping[str, Any], path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    if isinstance(value, bool) or (value is None and path == "spec.unschedulable"):
        return "true" if value else "false"
    return "" if value is None else str(value)


def _now() -> str:
    return _iso(time.time())


def _iso(unix: float) -> str:
    return datetime.datetime.fromtimestamp(unix, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeKube:
    """The server and its test controls (`add_node`, `inject_conflicts`, `pods`, `kubeconfig`)."""

    def __init__(self, start_delay_s: float = 0.1, seed: int = 0) -> None:
        self.lock = threading.RLock()
        self.objects: dict[Key, dict[str, Any]] = {}
        self.version = 0
        self.requests: list[tuple[str, str, str]] = []      # (RBAC verb, API group, resource)
        self.operator_errors: list[str] = []
        self.conflicts_to_inject = 0
        self.conflicts_served = 0
        self.operator_paused = False   # True: KubeRay is slow (or down); pods do not follow replicas
        self.start_delay_s = start_delay_s
        self.rng = random.Random(seed)
        self._scheduled_at: dict[str, float] = {}
        fake = self

        class Handler(QuietHandler):
            def _serve(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
                code, payload = fake.handle(self.command, self.path, self.headers.get("Content-Type", ""), body)
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve  # noqa: N815

        self._http = LoopbackServer(Handler, "fake-kube")
        self.url = self._http.url

    # --- test controls ----------------------------------------------------------------------------
    def close(self) -> None:
        self._http.close()

    def kubeconfig(self, path: Path, namespace: str = "rayfleet") -> Path:
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "fake-bearer-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}],
        }))
        return path

    def add_node(self, name: str, labels: dict[str, str] | None = None, gpus: int = 0,
                 taints: list[dict[str, str]] | None = None) -> None:
        resources = {"cpu": "192", "memory": "2000Gi", "pods": "110", "nvidia.com/gpu": str(gpus)}
        node = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
                "spec": {"taints": taints or []},
                "status": {"capacity": dict(resources), "allocatable": dict(resources)}}
        validate_core(node, cluster_scoped=True)
        with self.lock:
            self._create(("nodes", "", name), node)

    def inject_conflicts(self, count: int) -> None:
        """The next `count` RayCluster writes race a concurrent status update (as KubeRay makes)."""
        with self.lock:
            self.conflicts_to_inject += count

    def pods(self, namespace: str = "rayfleet", node_type: str | None = "worker") -> list[dict[str, Any]]:
        with self.lock:
            self._advance()
            return [copy.deepcopy(obj) for (plural, ns, _), obj in sorted(self.objects.items())
                    if plural == "pods" and ns == namespace
                    and (node_type is None or obj["metadata"]["labels"].get("ray.io/node-type") == node_type)]

    def resume_operator(self) -> None:
        """KubeRay catches up: every RayCluster is reconciled."""
        with self.lock:
            self.operator_paused = False
            for (plural, _, _), obj in list(self.objects.items()):
                if plural == "rayclusters":
                    self._reconcile(obj)

    def get(self, plural: str, name: str, namespace: str = "") -> dict[str, Any]:
        with self.lock:
            return copy.deepcopy(self.objects[(plural, namespace, name)])

    def fail_pod(self, name: str, namespace: str = "rayfleet", reason: str = "Evicted") -> None:
        """The kubelet gives up on a pod (eviction, a dead node): phase Failed."""
        with self.lock:
            pod = self.objects[("pods", namespace, name)]
            pod["status"] = {"phase": "Failed", "reason": reason, "message": f"The node was low on resource: {reason}"}
            self._bump(pod)

    def cordon(self, node: str) -> None:
        """`kubectl cordon`, the first step of `kubectl drain`: the node takes no new pods."""
        with self.lock:
            self.objects[("nodes", "", node)]["spec"]["unschedulable"] = True
            self._bump(self.objects[("nodes", "", node)])

    def evict(self, name: str, namespace: str = "rayfleet", grace_s: float = 30.0) -> None:
        """What a successful eviction (the API's pods/eviction, preemption, the taint manager) does:
        the pod gets the DisruptionTarget condition and a graceful delete (deletionTimestamp = now +
        its grace period); it is removed when the grace period ends (the kubelet killed it)."""
        with self.lock:
            pod = self.objects[("pods", namespace, name)]
            pod["status"].setdefault("conditions", []).append(
                {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI",
                 "message": "Eviction API: evicting"})
            pod["metadata"]["deletionTimestamp"] = _iso(time.time() + grace_s)
            self._bump(pod)

    # --- HTTP -------------------------------------------------------------------------------------
    def handle(self, method: str, raw_path: str, content_type: str, body: bytes) -> tuple[int, dict[str, Any]]:
        url = urlparse(raw_path)
        query = {key: values[0] for key, values in parse_qs(url.query).items()}
        try:
            group, plural, namespace, name = self._route(url.path)
            verb = RBAC_VERB.get(method, "get" if name else "list")
            with self.lock:
                self.requests.append((verb, group, plural))
                self._advance()
                payload = self._dispatch(method, group, plural, namespace, name, query, content_type, body)
            return (201 if method == "POST" else 200), payload
        except ApiError as error:
            return error.code, error.status()

    def _route(self, path: str) -> tuple[str, str, str, str | None]:
        parts = [part for part in path.split("/") if part]
        if parts[:2] == ["api", "v1"]:
            group, rest = "", parts[2:]
        elif parts and parts[0] == "apis" and len(parts) >= 3:
            group, rest = parts[1], parts[3:]
        else:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource {path}")
        namespace = ""
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if not rest or (group, rest[0]) not in CUSTOM | {("", "pods"), ("", "nodes")} or len(rest) > 2:
            raise ApiError(404, "NotFound", f"the fake API server does not serve {path}")
        return group, rest[0], namespace, rest[1] if len(rest) == 2 else None

    def _dispatch(self, method: str, group: str, plural: str, namespace: str, name: str | None,
                  query: dict[str, str], content_type: str, body: bytes) -> dict[str, Any]:
        key = (plural, namespace, name or "")
        if method == "GET" and name is None:
            return self._list(plural, namespace, query.get("labelSelector", ""), query.get("fieldSelector", ""))
        if method == "POST" and name is None and (group, plural) in CUSTOM:
            return self._create_custom(plural, namespace, json.loads(body))
        if name is None or key not in self.objects:
            raise ApiError(404, "NotFound", f'{plural} "{name}" not found')
        current = self.objects[key]
        if method == "GET":
            return copy.deepcopy(current)
        if method == "DELETE" and plural == "pods":
            del self.objects[key]
            self._reconcile_owner(current)
            return {"kind": "Status", "apiVersion": "v1", "status": "Success"}
        if method in ("PUT", "PATCH") and ((group, plural) in CUSTOM or plural == "nodes"):
            new = json.loads(body) if method == "PUT" else self._patched(current, content_type, json.loads(body))
            return self._write(key, current, new, require_version=method == "PUT")
        raise ApiError(405, "MethodNotAllowed", f"{method} {plural} is not served by the fake")

    # --- reading ----------------------------------------------------------------------------------
    def _list(self, plural: str, namespace: str, selector: str, fields: str = "") -> dict[str, Any]:
        wanted = dict(term.split("=", 1) for term in selector.split(",") if "=" in term)
        by_field = dict(term.split("=", 1) for term in fields.split(",") if "=" in term)
        if set(by_field) - FIELD_SELECTORS.get(plural, set()):
            raise ApiError(400, "BadRequest", f'field label not supported: {", ".join(sorted(by_field))}')
        items = [copy.deepcopy(obj) for (kind, ns, _), obj in sorted(self.objects.items())
                 if kind == plural and (not namespace or ns == namespace)
                 and all((obj["metadata"].get("labels") or {}).get(k) == v for k, v in wanted.items())
                 and all(_field(obj, k) == v for k, v in by_field.items())]
        return {"apiVersion": "v1", "kind": f"{KINDS[plural]}List",
                "metadata": {"resourceVersion": str(self.version)}, "items": items}

    # --- writing ----------------------------------------------------------------------------------
    def _patched(self, current: dict[str, Any], content_type: str, patch: Any) -> dict[str, Any]:
        try:
            if content_type.startswith("application/json-patch+json"):
                return json_patch(current, patch)
            if content_type.startswith(("application/merge-patch+json", "application/strategic-merge-patch+json")):
                return merge_patch(current, patch)
        except PatchFailed as error:
            raise ApiError(422, "Invalid", str(error)) from None
        raise ApiError(415, "UnsupportedMediaType", f"patch type {content_type!r} is not supported")

    def _write(self, key: Key, current: dict[str, Any], new: dict[str, Any], require_version: bool) -> dict[str, Any]:
        plural = key[0]
        if plural == "rayclusters" and self.conflicts_to_inject:
            self.conflicts_to_inject -= 1
            self.conflicts_served += 1
            current.setdefault("status", {})["lastUpdateTime"] = _now()  # KubeRay's status write won the race
            self._bump(current)
        sent = (new.get("metadata") or {}).get("resourceVersion")
        if require_version and not sent:
            raise ApiError(422, "Invalid", "metadata.resourceVersion: Invalid value: must be specified for an update")
        if sent and sent != current["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {plural} "{key[2]}": the object '
                                            "has been modified; please apply your changes to the latest version and try again")
        for field in ("uid", "creationTimestamp", "namespace", "name"):  # immutable, server-owned
            if field in current["metadata"]:
                new.setdefault("metadata", {})[field] = current["metadata"][field]
        if plural in ("rayclusters", "rayjobs"):
            if "status" in current:  # the status subresource: a main-resource write cannot change it
                new["status"] = current["status"]
            else:
                new.pop("status", None)
            self._validate_custom(plural, new)
            if new.get("spec") != current.get("spec"):
                new["metadata"]["generation"] = int(current["metadata"].get("generation", 1)) + 1
        else:
            self._validate_core(new, cluster_scoped=True)
        self.objects[key] = new
        self._bump(new)
        if plural == "rayclusters":
            self._reconcile(new)
        return copy.deepcopy(new)

    def _create_custom(self, plural: str, namespace: str, obj: dict[str, Any]) -> dict[str, Any]:
        obj.setdefault("metadata", {}).setdefault("namespace", namespace)
        key = (plural, namespace, obj["metadata"].get("name", ""))
        if key in self.objects:
            raise ApiError(409, "AlreadyExists", f'{plural} "{key[2]}" already exists')
        obj.pop("status", None)
        self._validate_custom(plural, obj)
        obj["metadata"]["generation"] = 1
        self._create(key, obj)
        if plural == "rayclusters":
            self._reconcile(obj)
        return copy.deepcopy(obj)

    def _validate_custom(self, plural: str, obj: dict[str, Any]) -> None:
        try:
            validate_custom(plural, obj)
        except Invalid as error:
            raise ApiError(422, "Invalid", f"{KINDS[plural]} is invalid: {error}") from None

    def _validate_core(self, obj: dict[str, Any], cluster_scoped: bool = False) -> None:
        try:
            validate_core(obj, cluster_scoped)
        except Invalid as error:
            raise ApiError(422, "Invalid", str(error)) from None

    def _create(self, key: Key, obj: dict[str, Any]) -> None:
        obj["metadata"].update(uid=str(uuid.UUID(int=self.rng.getrandbits(128))), creationTimestamp=_now())
        self.objects[key] = obj
        self._bump(obj)

    def _bump(self, obj: dict[str, Any]) -> None:
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)

    # --- the KubeRay operator -------------------------------------------------------------------
    def _reconcile_owner(self, pod: dict[str, Any]) -> None:
        cluster = self.objects.get(("rayclusters", pod["metadata"]["namespace"],
                                    pod["metadata"]["labels"].get("ray.io/cluster", "")))
        if cluster is not None:
            self._reconcile(cluster)

    def _reconcile(self, cluster: dict[str, Any]) -> None:
        """KubeRay's reconcilePods: the head exists; per group, workersToDelete go first, then
        pods are created or deleted until the group has its (clamped) replicas."""
        if self.operator_paused:
            return
        namespace, name = cluster["metadata"]["namespace"], cluster["metadata"]["name"]
        pods = {key: pod for key, pod in self.objects.items() if key[0] == "pods" and key[1] == namespace
                and pod["metadata"]["labels"].get("ray.io/cluster") == name}
        if not any(p["metadata"]["labels"]["ray.io/node-type"] == "head" for p in pods.values()):
            head = cluster["spec"]["headGroupSpec"]
            self._create_pod(cluster, head["template"], head.get("rayStartParams") or {}, "headgroup",
                             f"{name}-head-{self._suffix()}", head=True)
        for group in cluster["spec"].get("workerGroupSpecs", []):
            mine = {key: pod for key, pod in pods.items()
                    if pod["metadata"]["labels"].get("ray.io/group") == group["groupName"]
                    and pod["metadata"]["labels"]["ray.io/node-type"] == "worker"}
            for doomed in kuberay.workers_to_delete(group):
                if ("pods", namespace, doomed) in mine:
                    del self.objects[("pods", namespace, doomed)]
                    del mine[("pods", namespace, doomed)]
            desired = kuberay.desired_replicas(group)
            alive = sorted(mine.items(), key=lambda item: item[1]["metadata"]["creationTimestamp"] + item[0][2])
            while len(alive) > desired:  # KubeRay deletes arbitrary pods when autoscaling is off
                key, _ = alive.pop()
                del self.objects[key]
            for _ in range(desired - len(alive)):
                self._create_pod(cluster, group["template"], group.get("rayStartParams") or {},
                                 group["groupName"], f"{name}-{group['groupName']}-worker-{self._suffix()}", head=False)

    def _suffix(self) -> str:
        return "".join(self.rng.choice(kuberay.POD_NAME_ALPHABET) for _ in range(5))

    def _create_pod(self, cluster: dict[str, Any], template: dict[str, Any], params: dict[str, str],
                    group: str, name: str, head: bool) -> None:
        pod = kuberay.pod_from_template(cluster, template, params, name, group, head)
        try:
            validate_core(pod)
        except Invalid as error:  # KubeRay would log it and emit an event; the pod never appears
            self.operator_errors.append(str(error))
            return
        self._create(("pods", pod["metadata"]["namespace"], name), pod)

    # --- the scheduler and the kubelet ----------------------------------------------------------
    def _advance(self) -> None:
        now = time.time()
        for key, pod in [(k, o) for k, o in self.objects.items() if k[0] == "pods"]:
            ending = pod["metadata"].get("deletionTimestamp")
            if ending and datetime.datetime.fromisoformat(ending.replace("Z", "+00:00")).timestamp() <= now:
                del self.objects[key]  # its grace period ended: the kubelet killed it
                self._reconcile_owner(pod)
        nodes = [obj for (plural, _, _), obj in sorted(self.objects.items()) if plural == "nodes"]
        pods = [obj for (plural, _, _), obj in sorted(self.objects.items()) if plural == "pods"]
        for pod in pods:
            spec, status = pod["spec"], pod["status"]
            if status.get("phase") != "Pending":
                continue
            if not spec.get("nodeName"):
                self._schedule(pod, nodes, pods)
            elif now - self._scheduled_at.get(pod["metadata"]["uid"], now) >= self.start_delay_s:
                index = len(self._scheduled_at)
                pod["status"] = {"phase": "Running", "startTime": _now(), "hostIP": f"10.0.0.{index % 250 + 1}",
                                 "podIP": f"10.1.{index // 250}.{index % 250 + 1}",
                                 "conditions": [{"type": "Ready", "status": "True"}]}
                self._bump(pod)

    def _schedule(self, pod: dict[str, Any], nodes: list[dict[str, Any]], pods: list[dict[str, Any]]) -> None:
        reasons = []
        for node in nodes:
            used = sum(kuberay.gpus(other) for other in pods if other["spec"].get("nodeName") == node["metadata"]["name"]
                       and other["status"].get("phase") in ("Pending", "Running"))
            why = kuberay.fits(pod, node, used)
            if not why:
                pod["spec"]["nodeName"] = node["metadata"]["name"]
                pod["status"]["conditions"] = [{"type": "PodScheduled", "status": "True"}]
                self._scheduled_at[pod["metadata"]["uid"]] = time.time()
                self._bump(pod)
                return
            reasons.append(why)
        message = f"0/{len(nodes)} nodes are available: {', '.join(sorted(set(reasons))) or 'no nodes'}"
        if pod["status"].get("conditions", [{}])[0].get("message") != message:
            pod["status"]["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                            "message": message}]
            self._bump(pod)
