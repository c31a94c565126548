"""What rayfleet asks Kubernetes for: a KubeRay RayCluster and the objects around it, as dicts.

Pure: values in, plain dicts out (`rayfleet render k8s` writes them as YAML; tests validate them
against KubeRay's CRD schemas and Kubernetes' own). Two layers:
- `base_objects(namespace)`: what every fleet of a namespace shares (manifests/base is this for
  the namespace `rayfleet`): the namespace, the controller's ServiceAccount with least-privilege
  RBAC, the PriorityClasses, and a PodDisruptionBudget that keeps voluntary evictions off heads.
- `fleet_objects(spec)`: the RayCluster (head + one worker group per pool), a PodDisruptionBudget
  per pool, and the ConfigMap holding the spec the head's controller runs.

Secrets: the Ray auth token is never rendered. Every Ray container reads it from the Secret named
by `kubernetes.token_secret` (env RAY_AUTH_TOKEN through secretKeyRef, RAY_AUTH_MODE=token).
"""
from __future__ import annotations

import json
from typing import Any

import yaml

from rayfleet.cluster.render.ray_node import labels_argument, number, pool_labels, pool_resources
from rayfleet.cluster.spec.fleet import FleetSpec, KubernetesFleet, KubernetesPoolProvider, PoolSpec
from rayfleet.names import CONTROLLER_NAME as CONTROLLER, FLEET_LABEL, INSTANCE_LABEL, NAMESPACE, POOL_LABEL, ROLE_LABEL

RAY_API = "ray.io/v1"
CORDON_ROLE = "rayfleet-node-cordon"
HEAD_PRIORITY = "rayfleet-head"
WORKER_PRIORITY = "rayfleet-worker"
MANAGED = {"app.kubernetes.io/managed-by": NAMESPACE}
INSTANCE_ENV = "RAYFLEET_INSTANCE"
"""Each worker's pod name, from the downward API. Kubernetes expands `$(RAYFLEET_INSTANCE)` in the
container's args (where KubeRay puts `ray start`), so every Ray node is labelled with its own pod
name as `rayfleet.io/instance`: the join key between Ray nodes and pods."""

KUBERAY_VERSION = "v1.7.0"
"""The KubeRay release whose CRD schemas the tests validate every manifest against."""
OPERATOR = f"https://github.com/ray-project/kuberay/ray-operator/config/default?ref={KUBERAY_VERSION}"
STORAGE_VOLUME = "storage"

GCS_PORT = 6379          # KubeRay's default head ports
DASHBOARD_PORT = 8265
CLIENT_PORT = 10001

# `nvidia.com/gpu.product` as NVIDIA GPU Feature Discovery labels nodes (the NVML product name,
# spaces as dashes; https://github.com/NVIDIA/k8s-device-plugin#gpu-feature-discovery). SXM
# variants; a pool's node_selector overrides the value for other boards.
GPU_PRODUCT = {
    "H100": "NVIDIA-H100-80GB-HBM3",
    "H200": "NVIDIA-H200",
    "A100": "NVIDIA-A100-SXM4-80GB",
    "L40S": "NVIDIA-L40S",
    "L4": "NVIDIA-L4",
    "A10G": "NVIDIA-A10G",
    "T4": "Tesla-T4",
}
PTRACE = {"capabilities": {"add": ["SYS_PTRACE"]}}
"""The Ray containers' securityContext: py-spy reads a hung rank's stacks through ptrace, which a
container's default capabilities do not allow."""
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
"""The taint managed GPU node groups carry (EKS, GKE and AKS GPU pools taint nvidia.com/gpu)."""


def settings(spec: FleetSpec) -> KubernetesFleet:
    return spec.kubernetes or KubernetesFleet()


def pool_settings(pool: PoolSpec) -> KubernetesPoolProvider:
    return pool.provider.kubernetes or KubernetesPoolProvider()


def memory_quantity(size: int) -> str:
    """Bytes as a Kubernetes quantity: 17179869184 -> '16Gi'."""
    for suffix, factor in (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{suffix}"
    return str(size)


def cpu_quantity(cpus: float) -> str:
    return number(cpus) if float(cpus).is_integer() else f"{int(round(cpus * 1000))}m"


def _meta(name: str, namespace: str | None = None, **labels: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    meta["labels"] = {**MANAGED, **labels}
    return meta


# --- shared by every fleet of a namespace -------------------------------------------------------
def base_objects(namespace: str) -> list[dict[str, Any]]:
    """Namespace, least-privilege RBAC for the controller, PriorityClasses, the heads' PDB."""
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": _meta(namespace)},
        {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": _meta(HEAD_PRIORITY),
         # A head lost is a fleet lost (without GCS fault tolerance): it may preempt workers.
         "value": 1_000_000, "preemptionPolicy": "PreemptLowerPriority", "globalDefault": False,
         "description": "rayfleet Ray heads and their controller"},
        {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": _meta(WORKER_PRIORITY),
         # Below heads, above the default 0: training workers are not evicted for best-effort pods.
         "value": 100_000, "preemptionPolicy": "PreemptLowerPriority", "globalDefault": False,
         "description": "rayfleet GPU workers"},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(CONTROLLER, namespace)},
        # Exactly the calls the KubeRay provider makes (tests check both directions).
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": _meta(CONTROLLER, namespace),
         "rules": [{"apiGroups": ["ray.io"], "resources": ["rayclusters"], "verbs": ["get", "patch"]},
                   {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": _meta(CONTROLLER, namespace),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": CONTROLLER},
         "subjects": [{"kind": "ServiceAccount", "name": CONTROLLER, "namespace": namespace}]},
        # Nodes are cluster-scoped: cordoning the machine of a node quarantined for its hardware
        # (cluster/loop/act.py) and listing the cordoned ones (a drain is a notice) need a ClusterRole.
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": _meta(CORDON_ROLE),
         "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["list", "patch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": _meta(f"{CORDON_ROLE}-{namespace}"),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": CORDON_ROLE},
         "subjects": [{"kind": "ServiceAccount", "name": CONTROLLER, "namespace": namespace}]},
        {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _meta("rayfleet-heads", namespace),
         # No voluntary eviction (node drains, upgrades) of a head: run `rayfleet down` first.
         "spec": {"maxUnavailable": 0, "selector": {"matchLabels": {ROLE_LABEL: "head"}}}},
        {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _meta("rayfleet-workers", namespace),
         # A drain's evictions of workers wait: rayfleet reads the cordon as a notice, the jobs
         # checkpoint, and rayfleet deletes the pod itself (cluster/providers/kubernetes.py).
         "spec": {"maxUnavailable": 0, "selector": {"matchLabels": {ROLE_LABEL: "worker"}}}},
    ]


# --- one fleet ----------------------------------------------------------------------------------
def token_env(spec: FleetSpec) -> list[dict[str, Any]]:
    """Token authentication on, the token from the Secret (never a value in a manifest)."""
    k8s = settings(spec)
    return [{"name": "RAY_AUTH_MODE", "value": "token"},
            {"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": {"name": k8s.secret_name(spec.name),
                                                                      "key": k8s.token_secret_key}}},
            {"name": "RAY_USAGE_STATS_ENABLED", "value": "0"}]


def storage_claim(spec: FleetSpec) -> str | None:
    """The PersistentVolumeClaim mounted at the fleet's `storage` path in every pod (checkpoints
    and job histories every node reaches), or None without a storage path."""
    if not spec.storage:
        return None
    return settings(spec).storage_claim or f"{spec.name}-storage"


def storage_mounts(spec: FleetSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, volumeMounts) of the storage volume, empty without one."""
    claim = storage_claim(spec)
    if claim is None:
        return [], []
    return ([{"name": STORAGE_VOLUME, "persistentVolumeClaim": {"claimName": claim}}],
            [{"name": STORAGE_VOLUME, "mountPath": spec.storage}])


def storage_objects(spec: FleetSpec) -> list[dict[str, Any]]:
    """The ReadWriteMany claim rendered for the fleet (none when the spec names its own claim)."""
    k8s = settings(spec)
    if not spec.storage or k8s.storage_claim:
        return []
    claim: dict[str, Any] = {"accessModes": ["ReadWriteMany"],
                             "resources": {"requests": {"storage": memory_quantity(k8s.storage_size)}}}
    if k8s.storage_class:
        claim["storageClassName"] = k8s.storage_class
    return [{"apiVersion": "v1", "kind": "PersistentVolumeClaim",
             "metadata": _meta(f"{spec.name}-storage", k8s.namespace, **{FLEET_LABEL: spec.name}), "spec": claim}]


def _quoted_resources(pool: PoolSpec) -> str:
    # KubeRay pastes rayStartParams into a bash command line; a JSON value must carry its own
    # quotes (KubeRay's documented form: '"{\"Custom\": 1}"').
    return '"' + json.dumps(pool_resources(pool), sort_keys=True).replace('"', '\\"') + '"'


def worker_group(spec: FleetSpec, pool: PoolSpec) -> dict[str, Any]:
    """One pool as a KubeRay worker group."""
    k8s, own = settings(spec), pool_settings(pool)
    resources: dict[str, str] = {"cpu": cpu_quantity(pool.cpus_per_node), "memory": memory_quantity(pool.memory)}
    selector: dict[str, str] = {}
    tolerations: list[dict[str, Any]] = []
    if pool.gpus_per_node:
        resources["nvidia.com/gpu"] = str(pool.gpus_per_node)
        selector["nvidia.com/gpu.product"] = GPU_PRODUCT[pool.accelerator or ""]
        tolerations.append(dict(GPU_TOLERATION))
    selector.update(own.node_selector)
    tolerations.extend(t.model_dump(exclude_none=True) for t in own.tolerations)
    labels = {**pool_labels(spec.name, pool), INSTANCE_LABEL: f"$({INSTANCE_ENV})"}
    # num-cpus 0: the controller admits the node (resizes its CPUs to cpus_per_node) once its
    # health agent reported it healthy; a hot spare stays unadmitted until promoted.
    start_params = {"labels": labels_argument(labels), "num-cpus": "0"}
    if pool.accelerator:
        start_params["resources"] = _quoted_resources(pool)
    pod_spec: dict[str, Any] = {
        "priorityClassName": own.priority_class or WORKER_PRIORITY,
        "terminationGracePeriodSeconds": 30,
        # Workers call no Kubernetes API: no ServiceAccount token in them for a job's code to use.
        "automountServiceAccountToken": False,
        "containers": [{
            "name": "ray-worker",
            "image": own.image or k8s.image,
            "securityContext": PTRACE,
            "env": [{"name": INSTANCE_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    *token_env(spec)],
            # Extended resources (GPUs) need requests == limits; KubeRay derives Ray's num-gpus and
            # memory from these limits (num-cpus is set to 0 above, for admission).
            "resources": {"requests": dict(resources), "limits": dict(resources)},
            # NCCL and Ray's object store need a /dev/shm larger than the container default 64 MiB.
            "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}, *storage_mounts(spec)[1]],
        }],
        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory"}}, *storage_mounts(spec)[0]],
    }
    if selector:
        pod_spec["nodeSelector"] = selector
    if tolerations:
        pod_spec["tolerations"] = tolerations
    return {
        "groupName": pool.name,
        "replicas": pool.desired + pool.hot_spares,
        # rayfleet's planner owns the floor: KubeRay clamps replicas into [minReplicas, maxReplicas]
        # and would recreate a pod the planner is replacing if minReplicas were the pool's min_nodes.
        "minReplicas": 0,
        "maxReplicas": pool.max_nodes + pool.hot_spares,
        "numOfHosts": 1,
        "rayStartParams": start_params,
        "template": {"metadata": {"labels": {**MANAGED, FLEET_LABEL: spec.name, POOL_LABEL: pool.name,
                                             ROLE_LABEL: "worker"}},
                     "spec": pod_spec},
    }


def head_group(spec: FleetSpec) -> dict[str, Any]:
    """The head pod: Ray's head and, beside it, the container that starts the rayfleet controller."""
    k8s = settings(spec)
    fleet_dir = f"/var/lib/rayfleet/fleets/{spec.name}"
    controller_script = (
        "set -eu\n"
        f"install -d -m 0700 {fleet_dir}\n"
        # `rayfleet up` makes a token only when the fleet has none: it uses the Secret's.
        f"(umask 077; printf %s \"$RAY_AUTH_TOKEN\" > {fleet_dir}/auth_token)\n"
        "until rayfleet up -f /etc/rayfleet/fleet.yaml --no-wait; do sleep 5; done\n"
        "exec sleep infinity\n")
    head_cpu = cpu_quantity(max(1.0, spec.head.cpus))
    head_resources = {"cpu": head_cpu, "memory": memory_quantity(k8s.head_memory)}
    return {
        # Inside the cluster only (ClusterIP service); token authentication guards it.
        "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": number(spec.head.cpus),
                           "labels": labels_argument({FLEET_LABEL: spec.name})},
        "template": {
            "metadata": {"labels": {**MANAGED, FLEET_LABEL: spec.name, ROLE_LABEL: "head"}},
            "spec": {
                # The controller actor runs on the head; its Kubernetes calls use this account.
                "serviceAccountName": CONTROLLER,
                "priorityClassName": HEAD_PRIORITY,
                "containers": [
                    {"name": "ray-head", "image": k8s.image, "env": token_env(spec), "securityContext": PTRACE,
                     "volumeMounts": storage_mounts(spec)[1],
                     "ports": [{"containerPort": GCS_PORT, "name": "gcs-server"},
                               {"containerPort": DASHBOARD_PORT, "name": "dashboard"},
                               {"containerPort": CLIENT_PORT, "name": "client"}],
                     "resources": {"requests": dict(head_resources), "limits": dict(head_resources)}},
                    {"name": CONTROLLER, "image": k8s.image, "command": ["/bin/bash", "-c", controller_script],
                     "env": [*token_env(spec), {"name": "RAYFLEET_HOME", "value": "/var/lib/rayfleet"}],
                     "resources": {"requests": {"cpu": "100m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}},
                     "volumeMounts": [{"name": "fleet-spec", "mountPath": "/etc/rayfleet", "readOnly": True},
                                      {"name": "rayfleet-home", "mountPath": "/var/lib/rayfleet"},
                                      *storage_mounts(spec)[1]]},
                ],
                "volumes": [{"name": "fleet-spec", "configMap": {"name": spec_config_map_name(spec)}},
                            {"name": "rayfleet-home", "emptyDir": {}}, *storage_mounts(spec)[0]],
            },
        },
    }


def spec_config_map_name(spec: FleetSpec) -> str:
    return f"{spec.name}-fleet-spec"


def head_spec_yaml(spec: FleetSpec) -> str:
    """The spec the head's controller runs: the same fleet, its head being this pod's Ray head."""
    on_head = spec.model_copy(update={"head": spec.head.model_copy(update={"address": f"127.0.0.1:{GCS_PORT}"})})
    return yaml.safe_dump(on_head.model_dump(mode="json", exclude_none=True), sort_keys=False)


def ray_cluster(spec: FleetSpec) -> dict[str, Any]:
    return {
        "apiVersion": RAY_API, "kind": "RayCluster",
        "metadata": _meta(spec.name, settings(spec).namespace, **{FLEET_LABEL: spec.name}),
        "spec": {
            "rayVersion": settings(spec).ray_version,
            # rayfleet's controller sizes the groups (replicas, workersToDelete), not Ray's autoscaler.
            "enableInTreeAutoscaling": False,
            "headGroupSpec": head_group(spec),
            "workerGroupSpecs": [worker_group(spec, pool) for pool in spec.pools],
            **gcs_fault_tolerance(spec),
        },
    }


def gcs_fault_tolerance(spec: FleetSpec) -> dict[str, Any]:
    """KubeRay's GCS fault tolerance: the GCS keeps its state in the fleet's Redis, and KubeRay
    restarts a dead head pod against it while the workers wait. The password is a reference to
    the Secret `<fleet>-redis-password` (key `password`), never a value."""
    ft = spec.head.fault_tolerance
    if not ft.enabled:
        return {}
    return {"gcsFaultToleranceOptions": {
        "redisAddress": ft.redis_address,
        "redisPassword": {"valueFrom": {"secretKeyRef": {"name": f"{spec.name}-redis-password", "key": "password"}}},
        "externalStorageNamespace": spec.name,
    }}


def fleet_objects(spec: FleetSpec) -> list[dict[str, Any]]:
    namespace = settings(spec).namespace
    budgets = [
        {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
         "metadata": _meta(f"{spec.name}-{pool.name}", namespace, **{FLEET_LABEL: spec.name}),
         # Voluntary evictions take no more of a pool at once than remediation may (max_unavailable).
         "spec": {"maxUnavailable": pool.max_unavailable,
                  "selector": {"matchLabels": {"ray.io/cluster": spec.name, "ray.io/group": pool.name}}}}
        for pool in spec.pools]
    config = {"apiVersion": "v1", "kind": "ConfigMap",
              "metadata": _meta(spec_config_map_name(spec), namespace, **{FLEET_LABEL: spec.name}),
              "data": {"fleet.yaml": head_spec_yaml(spec)}}
    return [*budgets, config, *storage_objects(spec), ray_cluster(spec)]


def render_fleet(spec: FleetSpec) -> list[dict[str, Any]]:
    """Everything a fleet needs, in the order `kubectl apply -f` should create it."""
    return [*base_objects(settings(spec).namespace), *fleet_objects(spec)]


# --- files ----------------------------------------------------------------------------------------
FILE_OF_KIND = {"Namespace": "namespace.yaml", "PriorityClass": "priorityclass.yaml",
                "ServiceAccount": "rbac.yaml", "Role": "rbac.yaml", "RoleBinding": "rbac.yaml",
                "ClusterRole": "rbac.yaml", "ClusterRoleBinding": "rbac.yaml",
                "PodDisruptionBudget": "pdb.yaml", "ConfigMap": "configmap.yaml",
                "PersistentVolumeClaim": "storage.yaml",
                "RayCluster": "raycluster.yaml", "RayJob": "rayjob.yaml"}


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (scripts, the spec, runtime envs) as readable `|` blocks."""


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _string)


def to_yaml(objects: list[dict[str, Any]]) -> str:
    return "---\n".join(yaml.dump(obj, Dumper=_Dumper, sort_keys=False, width=120) for obj in objects)


def as_files(objects: list[dict[str, Any]]) -> dict[str, str]:
    """One YAML file per kind of object plus a kustomization.yaml listing them."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for obj in objects:
        grouped.setdefault(FILE_OF_KIND[obj["kind"]], []).append(obj)
    files = {name: to_yaml(items) for name, items in grouped.items()}
    files["kustomization.yaml"] = yaml.safe_dump(
        {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "resources": list(grouped)},
        sort_keys=False)
    return files


def operator_files() -> dict[str, str]:
    """KubeRay's operator and CRDs, the release the manifests are validated against: installed once
    per Kubernetes cluster, before any fleet (`kubectl create -k DIR/operator`)."""
    header = (f"# KubeRay {KUBERAY_VERSION}: the operator and its CRDs (RayCluster, RayJob), once per cluster.\n"
              "# kubectl create namespace ray-system && kubectl create -k operator/\n")
    body = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namespace": "ray-system",
            "resources": [OPERATOR]}
    return {"operator/kustomization.yaml": header + yaml.safe_dump(body, sort_keys=False)}


def prerequisites(spec: FleetSpec) -> list[str]:
    """What must exist before `kubectl apply -k DIR` (none of it is rendered: secrets never are)."""
    k8s = settings(spec)
    steps = [f"KubeRay {KUBERAY_VERSION} in the cluster: kubectl create namespace ray-system && "
             "kubectl create -k DIR/operator (once per cluster; skip if `kubectl get crd rayclusters.ray.io` finds it)",
             f"the Ray auth token Secret: kubectl create namespace {k8s.namespace}; kubectl -n {k8s.namespace} "
             f"create secret generic {k8s.secret_name(spec.name)} --from-literal={k8s.token_secret_key}="
             "$(openssl rand -hex 32)"]
    if spec.head.fault_tolerance.enabled:
        steps.append(f"the Redis password Secret: kubectl -n {k8s.namespace} create secret generic "
                     f"{spec.name}-redis-password --from-literal=password=PASSWORD (the password of "
                     f"{spec.head.fault_tolerance.redis_address})")
    if spec.storage and not k8s.storage_claim:
        steps.append(f"a StorageClass with ReadWriteMany ({k8s.storage_class or 'the cluster default'}) for the "
                     f"claim {spec.name}-storage mounted at {spec.storage} (EFS, Filestore, Azure Files, NFS)")
    steps.append(f"the image {k8s.image} in a registry the nodes pull from (the repository's Dockerfile builds it)")
    return steps
