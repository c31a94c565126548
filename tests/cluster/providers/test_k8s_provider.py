"""The KubeRay provider through the real `kubernetes` client against the fake API server
(tests/cluster/fake_kube: CRD and core schema validation, resourceVersion conflicts, KubeRay's pod
reconciliation, a scheduler). The controller loop is the production plan + act."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from rayfleet.errors import ProviderError
from rayfleet.cluster.providers.kubernetes import KubernetesProvider
from rayfleet.cluster.render.k8s import GPU_PRODUCT, base_objects, ray_cluster
from rayfleet.cluster.spec.fleet import FleetSpec
from rayfleet.cluster.decide.view import InstanceStatus
from tests.support.fake_kube import FakeKube
from tests.support.fake_kube.kuberay import ray_labels
from tests.support.provider_harness import EmulatedRay, ProviderHarness
from tests.support.specs import fleet_spec, h100_pool
from tests.conftest import wait_until

GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}


@pytest.fixture
def fake() -> Iterator[FakeKube]:
    server = FakeKube(start_delay_s=0.05)
    try:
        for index in range(4):
            server.add_node(f"gpu-h100-{index}", gpus=8, taints=[GPU_TAINT],
                            labels={"nvidia.com/gpu.product": GPU_PRODUCT["H100"]})
        server.add_node("gpu-l40s-0", gpus=4, labels={"nvidia.com/gpu.product": GPU_PRODUCT["L40S"]},
                        taints=[GPU_TAINT, {"key": "dedicated", "value": "inference", "effect": "NoSchedule"}])
        server.add_node("cpu-0")
        yield server
        assert server.operator_errors == []  # every pod KubeRay made from the templates was valid
    finally:
        server.close()


def k8s_spec(kubeconfig: Path, h100_nodes: int = 2) -> FleetSpec:
    h100 = h100_pool(cpus_per_node=96, memory="1000Gi", min_nodes=1, max_nodes=4, nodes=h100_nodes,
                     labels={"team": "research"})
    l40s = {"name": "l40s", "accelerator": "L40S", "gpus_per_node": 4, "cpus_per_node": 32, "memory": "256Gi",
            "min_nodes": 0, "max_nodes": 2, "nodes": 1,
            "provider": {"kubernetes": {"tolerations": [{"key": "dedicated", "operator": "Equal",
                                                         "value": "inference", "effect": "NoSchedule"}]}}}
    return fleet_spec(h100, l40s, name="kf", provider="kubernetes",
                      kubernetes={"namespace": "rayfleet", "kubeconfig": str(kubeconfig)},
                      scaling={"loop_period_s": 0.1, "boot_timeout_s": 60})


@pytest.fixture
def spec(fake: FakeKube, tmp_path: Path) -> FleetSpec:
    return k8s_spec(fake.kubeconfig(tmp_path / "kubeconfig"))


def apply_cluster(spec: FleetSpec) -> dict[str, Any]:
    """`kubectl apply` of the rendered RayCluster, through the real client and the fake's validation."""
    provider = KubernetesProvider(spec)
    from kubernetes import client

    return client.CustomObjectsApi(provider.api_client).create_namespaced_custom_object(
        "ray.io", "v1", "rayfleet", "rayclusters", ray_cluster(spec))


def group(fake: FakeKube, pool: str) -> dict[str, Any]:
    cluster = fake.get("rayclusters", "kf", "rayfleet")
    return next(g for g in cluster["spec"]["workerGroupSpecs"] if g["groupName"] == pool)


def pod_names(fake: FakeKube, pool: str) -> list[str]:
    return sorted(p["metadata"]["name"] for p in fake.pods() if p["metadata"]["labels"]["ray.io/group"] == pool)


# --- the acceptance test: the same controller and plan as the local provider ---------------------
def test_fleet_scales_up_and_down_replaces_an_unhealthy_node_and_restarts_without_duplicates(
        fake: FakeKube, spec: FleetSpec) -> None:
    apply_cluster(spec)
    provider = KubernetesProvider(spec)
    controller = ProviderHarness(spec, provider, ray=EmulatedRay(join_delay_s=0.1))
    controller.run_until(controller.settled, 30, "the rendered pools ready")
    assert len(pod_names(fake, "h100")) == 2 and len(pod_names(fake, "l40s")) == 1
    assert controller.launched() == []  # the RayCluster's own replicas: adopted, not launched again

    controller.targets["h100"] = 4
    controller.run_until(controller.settled, 30, "4 h100 pods ready")
    assert len(pod_names(fake, "h100")) == 4 and group(fake, "h100")["replicas"] == 4
    assert all("-worker-" in name for name in controller.state.nodes)  # every request became a pod

    controller.targets["h100"] = 1
    controller.run_until(lambda: controller.settled() and len(pod_names(fake, "h100")) == 1, 30, "scale down to 1")
    assert group(fake, "h100")["replicas"] == 1 and len(controller.drains.drained) == 3

    [bad] = pod_names(fake, "h100")
    bad_node = fake.get("pods", bad, "rayfleet")["spec"]["nodeName"]
    assert provider.cordon(bad) == bad_node  # remediation: a GPU hardware failure on that machine
    controller.ray.mark_dead(bad, "XID 79: GPU fell off the bus")
    controller.run_until(lambda: controller.settled() and bad not in pod_names(fake, "h100"), 30,
                         "the unhealthy node replaced")
    [replacement] = pod_names(fake, "h100")
    assert fake.get("pods", replacement, "rayfleet")["spec"]["nodeName"] != bad_node
    assert fake.get("nodes", bad_node)["spec"]["unschedulable"] is True
    assert bad in group(fake, "h100")["scaleStrategy"]["workersToDelete"]

    pods_before = {p["metadata"]["name"] for p in fake.pods()}
    restarted = controller.restarted(KubernetesProvider(spec))  # a new process: no state
    restarted.run_until(restarted.settled, 30, "the restarted controller settled")
    for _ in range(5):
        restarted.tick()
    assert restarted.launched() == [] and {p["metadata"]["name"] for p in fake.pods()} == pods_before
    assert group(fake, "h100")["replicas"] == 1
    assert sorted(e.instance for e in restarted.events if e.kind == "adopt") == sorted(pods_before)


def test_a_crash_between_launching_and_seeing_the_pod_neither_duplicates_nor_loses_it(
        fake: FakeKube, spec: FleetSpec) -> None:
    apply_cluster(spec)
    controller = ProviderHarness(spec, KubernetesProvider(spec))
    controller.run_until(controller.settled, 30, "the rendered pools ready")
    controller.targets["h100"] = 3
    fake.operator_paused = True  # KubeRay has not made the pod yet when the controller dies
    decided = controller.tick()  # persisted "kf-h100-0001 requested", then patched replicas ...
    assert [a.instance for a in decided.actions] == ["kf-h100-0001"]
    # ... and crashed. The restarted controller resumes from the persisted state and, 30 s on,
    # asks again: the RayCluster's request ledger makes that a no-op, not a fourth pod.
    resumed = controller.restarted(KubernetesProvider(spec), keep_state=True)
    resumed.skip(31)
    resumed.tick()
    assert resumed.launched() == ["kf-h100-0001"] and group(fake, "h100")["replicas"] == 3
    fake.resume_operator()
    resumed.run_until(resumed.settled, 30, "the requested pod paired and ready")
    assert len(pod_names(fake, "h100")) == 3 and group(fake, "h100")["replicas"] == 3
    assert "kf-h100-0001" not in resumed.state.nodes


# --- what KubeRay makes of the rendered cluster ---------------------------------------------------
def test_rendered_pods_carry_the_ray_labels_resources_and_token_reference(fake: FakeKube, spec: FleetSpec) -> None:
    apply_cluster(spec)
    pods = wait_until(lambda: [p for p in fake.pods() if p["status"]["phase"] == "Running"] if all(
        p["status"]["phase"] == "Running" for p in fake.pods()) else None, 10, "pods running")
    assert len(pods) == 3
    for pod in pods:
        name, pool = pod["metadata"]["name"], pod["metadata"]["labels"]["ray.io/group"]
        labels = ray_labels(pod)  # after Kubernetes expands $(RAYFLEET_INSTANCE) from the downward API
        assert labels["rayfleet.io/instance"] == name and labels["rayfleet.io/pool"] == pool
        assert labels["rayfleet.io/fleet"] == "kf"
        container = pod["spec"]["containers"][0]
        token = next(e for e in container["env"] if e["name"] == "RAY_AUTH_TOKEN")
        assert token["valueFrom"]["secretKeyRef"] == {"name": "kf-ray-token", "key": "token"}
        assert "accelerator_type:" in container["args"][0]
        node = fake.get("nodes", pod["spec"]["nodeName"])
        expected = GPU_PRODUCT["H100" if pool == "h100" else "L40S"]
        assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == expected
    heads = fake.pods(node_type="head")
    assert len(heads) == 1 and heads[0]["metadata"]["name"] not in {i.id for i in KubernetesProvider(spec).instances()}


# --- the provider's calls ---------------------------------------------------------------------------
def test_launch_raises_replicas_once_however_often_it_is_repeated(fake: FakeKube, spec: FleetSpec) -> None:
    apply_cluster(spec)
    provider = KubernetesProvider(spec)
    provider.launch(spec.pool("h100"), ["kf-h100-0003"])
    provider.launch(spec.pool("h100"), ["kf-h100-0003"])  # a controller repeating itself after a crash
    assert group(fake, "h100")["replicas"] == 3 and len(pod_names(fake, "h100")) == 3
    patches = sum(1 for verb, _, resource in fake.requests if (verb, resource) == ("patch", "rayclusters"))
    assert patches == 1


def test_terminate_removes_exactly_the_named_pods_and_is_idempotent(fake: FakeKube, spec: FleetSpec) -> None:
    apply_cluster(spec)
    provider = KubernetesProvider(spec)
    provider.launch(spec.pool("h100"), ["kf-h100-0003", "kf-h100-0004"])
    pods = pod_names(fake, "h100")
    victim = pods[1]
    provider.terminate([victim, "kf-l40s-gone-12345"], wait=True)
    assert pod_names(fake, "h100") == [p for p in pods if p != victim]
    assert group(fake, "h100")["replicas"] == 3
    writes = len(fake.requests)
    provider.terminate([victim])
    assert [r for r in fake.requests[writes:] if r[0] == "patch"] == [("patch", "ray.io", "rayclusters")]  # pruning
    provider.terminate([victim])
    assert group(fake, "h100")["replicas"] == 3 and "scaleStrategy" in group(fake, "h100")
    assert group(fake, "h100")["scaleStrategy"]["workersToDelete"] == []


def test_requests_kuberay_has_not_served_yet_are_kept_or_withdrawn_exactly(fake: FakeKube, spec: FleetSpec) -> None:
    apply_cluster(spec)
    provider = KubernetesProvider(spec)
    fake.operator_paused = True  # KubeRay is slow: requests stay without pods for a while
    provider.launch(spec.pool("h100"), ["kf-h100-0003"])
    provider.launch(spec.pool("h100"), ["kf-h100-0004"])  # a later pass, the first still unserved
    provider.launch(spec.pool("h100"), ["kf-h100-0003"])  # a repeat
    assert group(fake, "h100")["replicas"] == 4
    provider.terminate(["kf-h100-0004"])  # scaled away before KubeRay made its pod
    assert group(fake, "h100")["replicas"] == 3
    fake.resume_operator()
    assert len(pod_names(fake, "h100")) == 3
    provider.launch(spec.pool("h100"), ["kf-h100-0005", "kf-h100-0006"])
    assert group(fake, "h100")["replicas"] == 4  # maxReplicas (max_nodes 4): never beyond


def test_conflicting_writes_are_recomputed_from_a_fresh_read(fake: FakeKube, spec: FleetSpec) -> None:
    apply_cluster(spec)
    provider = KubernetesProvider(spec, sleep=lambda seconds: None)
    fake.inject_conflicts(3)
    provider.launch(spec.pool("h100"), ["kf-h100-0003"])
    assert fake.conflicts_served == 3 and group(fake, "h100")["replicas"] == 3
    fake.inject_conflicts(100)
    with pytest.raises(ProviderError, match="still conflicting"):
        provider.launch(spec.pool("h100"), ["kf-h100-0004"])
    fake.conflicts_to_inject = 0


def test_cordon_is_idempotent_and_a_failed_pod_is_reported_terminated(fake: FakeKube, spec: FleetSpec) -> None:
    apply_cluster(spec)
    provider = KubernetesProvider(spec)
    pod = pod_names(fake, "l40s")[0]
    node = provider.cordon(pod)
    assert node == "gpu-l40s-0" and provider.cordon(pod) == node
    assert provider.cordon("no-such-pod") is None
    fake.fail_pod(pod, reason="Evicted")
    [instance] = [i for i in provider.instances() if i.id == pod]
    assert instance.status is InstanceStatus.TERMINATED and "Evicted" in instance.detail


def test_a_node_quarantined_for_its_hardware_cordons_its_machine(fake: FakeKube, spec: FleetSpec) -> None:
    """The controller's quarantine (a failed GPU check) marks the pod's Kubernetes node
    unschedulable, so the pool's replacement does not land on the same bad GPU."""
    from rayfleet.cluster.decide.actions import Vacate
    from rayfleet.cluster.loop.act import act
    from tests.support.provider_harness import DrainRecorder

    apply_cluster(spec)
    provider = KubernetesProvider(spec)
    bad = pod_names(fake, "l40s")[0]
    machine = fake.get("pods", bad, "rayfleet")["spec"]["nodeName"]
    assert not fake.get("nodes", machine).get("spec", {}).get("unschedulable")
    act([Vacate("l40s", bad, "0" * 56, "gpu.xid: XID 79")], provider, spec, DrainRecorder())
    assert fake.get("nodes", machine)["spec"]["unschedulable"] is True


def test_a_drained_node_and_an_evicted_pod_are_notices_replaced_before_their_pods_go(
        fake: FakeKube, spec: FleetSpec) -> None:
    """`kubectl drain` cordons first and evicts next (its evictions wait on the rendered budget):
    the cordon is read as a notice, as an EC2 spot interruption is. An eviction that went through
    (a preemption, a drain without the budget) is a notice with the pod's grace period as deadline."""
    from rayfleet.cluster.decide.notices import UNTIMED_NOTICE_S
    from rayfleet.cluster.decide.state import NodeState

    apply_cluster(spec)
    provider = KubernetesProvider(spec)
    controller = ProviderHarness(spec, provider, ray=EmulatedRay(join_delay_s=0.1))
    controller.run_until(controller.settled, 30, "the rendered pools ready")
    drained, evicted = pod_names(fake, "h100")
    machine = fake.get("pods", drained, "rayfleet")["spec"]["nodeName"]

    fake.evict(evicted, grace_s=60)
    controller.run_until(lambda: controller.ready("h100") == 2 and evicted in controller.records("h100", NodeState.DRAINING),
                         30, "the evicted pod noticed and replaced")
    record = controller.state.nodes[evicted]
    assert record.notice_deadline == pytest.approx(time.time() + 60, abs=5)  # its grace period, not 120 s
    assert any(e.kind == "notice" and "evicts" in e.message for e in controller.events if e.instance == evicted)
    assert len(pod_names(fake, "h100")) == 3  # its replacement came up before it goes

    fake.cordon(machine)
    controller.run_until(lambda: controller.ready("h100") == 2 and drained in controller.records("h100", NodeState.DRAINING),
                         30, "the drained node noticed and replaced")
    notice = next(e for e in controller.events if e.kind == "notice" and e.instance == drained)
    assert "cordoned" in notice.message and machine in notice.message, notice.message
    assert controller.ray.node_id(drained) in controller.drains.drained  # Ray Train sees a preemption
    replacements = set(pod_names(fake, "h100")) - {drained, evicted}
    assert all(fake.get("pods", pod, "rayfleet")["spec"]["nodeName"] != machine for pod in replacements)
    controller.skip(UNTIMED_NOTICE_S + 1)  # no job acknowledged: it is ended at its notice's deadline
    controller.run_until(lambda: drained not in pod_names(fake, "h100"), 30, "the drained node's pod ended")


def test_the_rbac_rules_allow_exactly_the_calls_the_provider_makes(fake: FakeKube, spec: FleetSpec) -> None:
    apply_cluster(spec)
    fake.requests.clear()
    provider = KubernetesProvider(spec)
    provider.launch(spec.pool("h100"), ["kf-h100-0003"])
    provider.terminate([pod_names(fake, "h100")[0]])
    provider.instances()
    provider.cordon(pod_names(fake, "l40s")[0])
    called = set(fake.requests)
    rules = [rule for obj in base_objects("rayfleet") if obj["kind"] in ("Role", "ClusterRole") for rule in obj["rules"]]
    allowed = {(verb, group, resource) for rule in rules for verb in rule["verbs"]
               for group in rule["apiGroups"] for resource in rule["resources"]}
    assert called == allowed


def test_a_missing_raycluster_or_group_is_a_clear_provider_error(fake: FakeKube, spec: FleetSpec) -> None:
    provider = KubernetesProvider(spec)
    with pytest.raises(ProviderError, match="does not exist.*rayfleet render k8s"):
        provider.launch(spec.pool("h100"), ["kf-h100-0001"])
    assert provider.instances() == []


def test_the_fake_api_server_refuses_invalid_objects_and_stale_writes(fake: FakeKube, spec: FleetSpec) -> None:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    api = client.CustomObjectsApi(KubernetesProvider(spec).api_client)
    typo = ray_cluster(spec)
    typo["spec"]["workerGroupSpecs"][0]["replica"] = 3
    with pytest.raises(ApiException) as invalid:
        api.create_namespaced_custom_object("ray.io", "v1", "rayfleet", "rayclusters", typo)
    assert invalid.value.status == 422 and "replica" in invalid.value.body
    created = apply_cluster(spec)
    stale = dict(created, metadata={**created["metadata"], "resourceVersion": "1"})
    with pytest.raises(ApiException) as conflict:
        api.replace_namespaced_custom_object("ray.io", "v1", "rayfleet", "rayclusters", "kf", stale)
    assert conflict.value.status == 409
