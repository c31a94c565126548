"""What KubeRay's operator, the scheduler and the kubelet do that the provider relies on: pure
functions over object dicts, applied by the fake API server (server.py)."""
from __future__ import annotations

import copy
import re
import shlex
from typing import Any, Mapping

POD_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
"""The alphabet of generateName suffixes (k8s.io/apimachinery/pkg/util/rand)."""


def desired_replicas(group: Mapping[str, Any]) -> int:
    """KubeRay's GetWorkerGroupDesiredReplicas: replicas clamped into [minReplicas, maxReplicas]."""
    if group.get("suspend"):
        return 0
    low, high = int(group.get("minReplicas", 0)), int(group.get("maxReplicas", 2**31 - 1))
    replicas = int(group.get("replicas", low))
    return max(low, min(high, replicas)) * int(group.get("numOfHosts", 1))


def workers_to_delete(group: Mapping[str, Any]) -> list[str]:
    return list((group.get("scaleStrategy") or {}).get("workersToDelete") or [])


def _limits(container: Mapping[str, Any]) -> Mapping[str, str]:
    return (container.get("resources") or {}).get("limits") or {}


def ray_start(cluster: Mapping[str, Any], params: Mapping[str, str], container: Mapping[str, Any], head: bool) -> str:
    """The container args KubeRay generates: `ray start` with the group's rayStartParams and the
    CPU/GPU counts taken from the container's limits."""
    args = dict(params)
    limits = _limits(container)
    if "nvidia.com/gpu" in limits and "num-gpus" not in args:
        args["num-gpus"] = str(limits["nvidia.com/gpu"])
    if "cpu" in limits and "num-cpus" not in args:
        args["num-cpus"] = str(limits["cpu"])
    name, namespace = cluster["metadata"]["name"], cluster["metadata"]["namespace"]
    start = "ray start --head" if head else f"ray start --address={name}-head-svc.{namespace}.svc.cluster.local:6379"
    return "ulimit -n 65536; " + start + " " + " ".join(f"--{key}={value}" for key, value in args.items()) + " --block"


def pod_from_template(cluster: Mapping[str, Any], template: Mapping[str, Any], params: Mapping[str, str],
                      name: str, group: str, head: bool) -> dict[str, Any]:
    """A Ray pod as KubeRay builds it from a group's template."""
    template = copy.deepcopy(dict(template))
    meta = template.get("metadata") or {}
    spec = template["spec"]
    container = spec["containers"][0]
    container["command"] = ["/bin/bash", "-lc", "--"]
    container["args"] = [ray_start(cluster, params, container, head)]
    labels = {**(meta.get("labels") or {}), "ray.io/cluster": cluster["metadata"]["name"], "ray.io/group": group,
              "ray.io/node-type": "head" if head else "worker", "ray.io/is-ray-node": "yes",
              "app.kubernetes.io/created-by": "kuberay-operator"}
    spec.setdefault("restartPolicy", "Always" if head else "Never")
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": cluster["metadata"]["namespace"], "labels": labels,
                         "ownerReferences": [{"apiVersion": "ray.io/v1", "kind": "RayCluster",
                                              "name": cluster["metadata"]["name"], "uid": cluster["metadata"]["uid"],
                                              "controller": True, "blockOwnerDeletion": True}]},
            "spec": spec, "status": {"phase": "Pending"}}


def gpus(pod: Mapping[str, Any]) -> int:
    return sum(int(_limits(c).get("nvidia.com/gpu", 0)) for c in pod["spec"]["containers"])


def tolerates(tolerations: list[Mapping[str, Any]], taint: Mapping[str, Any]) -> bool:
    """core/v1 Toleration.ToleratesTaint."""
    for toleration in tolerations:
        if toleration.get("effect") and toleration["effect"] != taint.get("effect"):
            continue
        if toleration.get("operator", "Equal") == "Exists":
            if not toleration.get("key") or toleration["key"] == taint.get("key"):
                return True
        elif toleration.get("key") == taint.get("key") and toleration.get("value", "") == taint.get("value", ""):
            return True
    return False


def fits(pod: Mapping[str, Any], node: Mapping[str, Any], gpus_used: int) -> str:
    """'' if the scheduler may bind `pod` to `node`, else why not."""
    spec = pod["spec"]
    if (node.get("spec") or {}).get("unschedulable"):
        return "node is unschedulable (cordoned)"
    labels = node["metadata"].get("labels") or {}
    for key, value in (spec.get("nodeSelector") or {}).items():
        if labels.get(key) != value:
            return f"node selector {key}={value} does not match"
    for taint in (node.get("spec") or {}).get("taints") or []:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not tolerates(spec.get("tolerations") or [], taint):
            return f"untolerated taint {taint.get('key')}"
    capacity = int(((node.get("status") or {}).get("allocatable") or {}).get("nvidia.com/gpu", 0))
    if gpus(pod) > capacity - gpus_used:
        return "insufficient nvidia.com/gpu"
    return ""


def expanded_args(pod: Mapping[str, Any]) -> list[str]:
    """The Ray container's command line after Kubernetes' $(VAR) expansion (env values and
    downward-API fields) and bash's word splitting: what the kubelet would run."""
    container = pod["spec"]["containers"][0]
    env: dict[str, str] = {}
    for item in container.get("env") or []:
        if "value" in item:
            env[item["name"]] = item["value"]
        elif (item.get("valueFrom") or {}).get("fieldRef"):
            field = item["valueFrom"]["fieldRef"]["fieldPath"]
            env[item["name"]] = {"metadata.name": pod["metadata"]["name"],
                                 "metadata.namespace": pod["metadata"]["namespace"]}.get(field, "")
    line = " ".join(container.get("args") or [])
    line = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), line)
    return shlex.split(line.split("; ", 1)[-1])


def ray_labels(pod: Mapping[str, Any]) -> dict[str, str]:
    """The Ray node labels the pod's `ray start` would register."""
    for arg in expanded_args(pod):
        if arg.startswith("--labels="):
            return dict(pair.split("=", 1) for pair in arg[len("--labels="):].split(","))
    return {}
