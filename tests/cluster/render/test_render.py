"""`rayfleet render`: every Kubernetes object validates against KubeRay's CRD schemas and
Kubernetes' own, every EC2 request against botocore's EC2 model; IAM and RBAC are least
privilege; no output holds a token; the committed manifests/ are what the renderer makes now.

To refresh the committed manifests after changing the renderer:
    RAYFLEET_UPDATE_RENDERED=1 python -m pytest tests/cluster/render/test_render.py -k up_to_date
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import botocore.session
import pytest
import yaml
from botocore.validate import ParamValidator

from rayfleet.errors import BadInput
from rayfleet.cluster.render import aws, k8s
from rayfleet.jobs.client.kuberay import ray_job
from rayfleet.jobs.client.spec import JobSpec, load_job_spec
from rayfleet.cluster.spec.fleet import FleetSpec, load_fleet_spec
from tests.support.fake_kube.schemas import validate_core, validate_custom
from tests.support.specs import fleet_spec
from tests.conftest import ROOT, rayfleet

EXAMPLES = ROOT / "manifests" / "examples"
RENDERED = ROOT / "manifests" / "rendered"
CLUSTER_SCOPED = {"Namespace", "PriorityClass", "ClusterRole", "ClusterRoleBinding"}
TOKEN = "rf-test-token-5f2a9c0d4e7b1a3c"


def k8s_variants() -> list[FleetSpec]:
    """The example and the corners: a CPU pool, hot spares, fractional CPUs, custom selectors."""
    example = load_fleet_spec(EXAMPLES / "k8s-fleet.yaml")
    cpu = {"name": "cpu", "cpus_per_node": 1.5, "memory": "3Gi", "max_nodes": 3, "nodes": 2}
    t4 = {"name": "t4", "accelerator": "T4", "gpus_per_node": 1, "hot_spares": 1, "max_nodes": 2, "max_unavailable": 0,
          "provider": {"kubernetes": {"node_selector": {"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"},
                                      "priority_class": "batch-low", "image": "ghcr.io/x/ray-gpu:1",
                                      "tolerations": [{"operator": "Exists"}]}}}
    corner = fleet_spec(cpu, t4, name="corner", provider="kubernetes", head={"cpus": 0.5},
                        kubernetes={"namespace": "ml", "token_secret": "shared-token", "image": "ghcr.io/x/ray:1"})
    return [example, corner]


def pod_templates(obj: dict[str, Any]) -> list[dict[str, Any]]:
    if obj["kind"] == "RayCluster":
        spec = obj["spec"]
        return [spec["headGroupSpec"]["template"], *(g["template"] for g in spec["workerGroupSpecs"])]
    if obj["kind"] == "RayJob":
        return [obj["spec"]["submitterPodTemplate"]]
    return []


def validate_object(obj: dict[str, Any]) -> None:
    if obj["apiVersion"].startswith("ray.io/"):
        validate_custom({"RayCluster": "rayclusters", "RayJob": "rayjobs"}[obj["kind"]], obj)
        for template in pod_templates(obj):  # the pods KubeRay makes must be valid core pods
            validate_core({"apiVersion": "v1", "kind": "PodTemplate",
                           "metadata": {"name": "t", "namespace": "rayfleet"}, "template": template})
    else:
        validate_core(obj, cluster_scoped=obj["kind"] in CLUSTER_SCOPED)


def example_job() -> tuple[JobSpec, FleetSpec, str]:
    fleet = EXAMPLES / "k8s-fleet.yaml"
    return load_job_spec(EXAMPLES / "k8s-job.yaml"), load_fleet_spec(fleet), str(fleet)


# --- Kubernetes -----------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", k8s_variants(), ids=lambda spec: spec.name)
def test_every_rendered_kubernetes_object_validates_against_kuberay_and_kubernetes_schemas(spec: FleetSpec) -> None:
    objects = k8s.render_fleet(spec)
    assert [o["kind"] for o in objects].count("RayCluster") == 1
    for obj in objects:
        validate_object(obj)
    cluster = objects[-1]
    groups = {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}
    for pool in spec.pools:
        group = groups[pool.name]
        assert (group["replicas"], group["maxReplicas"]) == (pool.desired + pool.hot_spares, pool.max_nodes + pool.hot_spares)
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert limits.get("nvidia.com/gpu") == (str(pool.gpus_per_node) if pool.gpus_per_node else None)
        assert f"rayfleet.io/pool={pool.name}" in group["rayStartParams"]["labels"]
        assert group["rayStartParams"]["labels"].endswith("rayfleet.io/instance=$(RAYFLEET_INSTANCE)")
    budgets = {o["metadata"]["name"]: o["spec"]["maxUnavailable"] for o in objects if o["kind"] == "PodDisruptionBudget"}
    assert all(budgets[f"{spec.name}-{pool.name}"] == pool.max_unavailable for pool in spec.pools)


def test_the_rendered_rayjob_validates_and_runs_on_its_fleets_cluster() -> None:
    job, fleet, fleet_path = example_job()
    [obj] = [ray_job(job, fleet, fleet_path)]
    validate_object(obj)
    assert obj["spec"]["clusterSelector"] == {"ray.io/cluster": "k8s-demo"}
    assert "rayClusterSpec" not in obj["spec"] and "shutdownAfterJobFinishes" not in obj["spec"]
    assert obj["spec"]["metadata"]["rayfleet.io/job"] == "moe-pretrain"
    env = yaml.safe_load(obj["spec"]["runtimeEnvYAML"])["env_vars"]
    assert JobSpec.model_validate_json(env["RAYFLEET_JOB_SPEC"]) == job
    run = json.loads(env["RAYFLEET_JOB_RUN"])
    assert run["storage"] == fleet.storage and run["device"] == "cuda" and "submission_id" not in run


def test_gpu_pools_get_accelerator_selectors_and_tolerations_cpu_pools_none() -> None:
    _, corner = k8s_variants()
    groups = {g["groupName"]: g["template"]["spec"] for g in k8s.ray_cluster(corner)["spec"]["workerGroupSpecs"]}
    assert "nodeSelector" not in groups["cpu"] and "tolerations" not in groups["cpu"]
    assert groups["t4"]["nodeSelector"] == {"nvidia.com/gpu.product": "Tesla-T4",
                                            "cloud.google.com/gke-accelerator": "nvidia-tesla-t4"}
    assert groups["t4"]["tolerations"] == [k8s.GPU_TOLERATION, {"operator": "Exists"}]
    assert groups["t4"]["priorityClassName"] == "batch-low"


def test_workers_mount_no_api_token_and_ray_containers_may_ptrace_for_py_spy() -> None:
    """A job's code on a worker gets no Kubernetes credentials; the head keeps the controller's
    ServiceAccount. Every Ray container may ptrace (py-spy dumps a hung rank's stacks)."""
    cluster = k8s.ray_cluster(k8s_variants()[1])["spec"]
    head = cluster["headGroupSpec"]["template"]["spec"]
    assert head["serviceAccountName"] == k8s.CONTROLLER and "automountServiceAccountToken" not in head
    for group in cluster["workerGroupSpecs"]:
        pod = group["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False and "serviceAccountName" not in pod
        assert pod["containers"][0]["securityContext"] == {"capabilities": {"add": ["SYS_PTRACE"]}}
    ray_head = next(c for c in head["containers"] if c["name"] == "ray-head")
    assert ray_head["securityContext"] == {"capabilities": {"add": ["SYS_PTRACE"]}}


def test_every_pod_mounts_the_fleets_storage_claim_at_its_storage_path() -> None:
    """Checkpoints and histories live at `storage` on every pod: the rendered ReadWriteMany claim
    (or the spec's own claim) is mounted there in the head, the controller and every worker."""
    example, corner = k8s_variants()
    objects = k8s.render_fleet(example)
    [claim] = [o for o in objects if o["kind"] == "PersistentVolumeClaim"]
    assert claim["metadata"]["name"] == "k8s-demo-storage" and claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"]["storageClassName"] == "efs-sc"
    cluster = next(o for o in objects if o["kind"] == "RayCluster")["spec"]
    pods = [cluster["headGroupSpec"]["template"]["spec"], *(g["template"]["spec"] for g in cluster["workerGroupSpecs"])]
    for pod in pods:
        assert {"name": "storage", "persistentVolumeClaim": {"claimName": "k8s-demo-storage"}} in pod["volumes"]
    mounted = [c for pod in pods for c in pod["containers"]
               if {"name": "storage", "mountPath": "/mnt/shared/rayfleet"} in c.get("volumeMounts", [])]
    assert len(mounted) == 2 + len(cluster["workerGroupSpecs"])  # ray-head, the controller, each worker group
    own = example.model_copy(update={"kubernetes": example.kubernetes.model_copy(update={"storage_claim": "team-fs"})})
    assert not [o for o in k8s.render_fleet(own) if o["kind"] == "PersistentVolumeClaim"]
    assert "PersistentVolumeClaim" not in [o["kind"] for o in k8s.render_fleet(corner)]  # no storage: no volume


def test_the_image_is_the_dockerfiles_and_the_operator_the_validated_kuberay() -> None:
    """The default image is what the repository's Dockerfile builds for this version, on Ray's GPU
    image of the Ray release rayfleet is held to; DIR/operator installs the KubeRay release whose
    CRD schemas the manifests are validated against."""
    from importlib.metadata import version

    example, _ = k8s_variants()
    assert example.kubernetes.image == f"ghcr.io/rayfleet/rayfleet:{version('rayfleet')}"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"FROM rayproject/ray:{example.kubernetes.ray_version}-py311-gpu" in dockerfile
    assert example.kubernetes.ray_version.startswith(version("ray").rsplit(".", 1)[0])
    operator = yaml.safe_load(k8s.operator_files()["operator/kustomization.yaml"])
    assert operator["resources"] == [k8s.OPERATOR] and k8s.KUBERAY_VERSION in k8s.OPERATOR
    from tests.support.fake_kube.schemas import KUBERAY_SCHEMAS

    assert k8s.KUBERAY_VERSION in (KUBERAY_SCHEMAS / "SOURCE.md").read_text()  # the schemas the tests validate with


def test_kubernetes_secrets_are_referenced_never_rendered() -> None:
    for spec in k8s_variants():
        objects = k8s.render_fleet(spec)
        for obj in [*objects, ray_job(*example_job())]:
            for template in pod_templates(obj):
                for container in template["spec"]["containers"]:
                    env = {e["name"]: e for e in container.get("env", [])}
                    assert env["RAY_AUTH_MODE"]["value"] == "token"
                    assert set(env["RAY_AUTH_TOKEN"]) == {"name", "valueFrom"}
                    assert "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"]
        assert "Secret" not in {o["kind"] for o in objects}


# --- AWS --------------------------------------------------------------------------------------------
def ec2_model() -> Any:
    return botocore.session.get_session().get_service_model("ec2")


def test_launch_templates_and_placement_groups_are_valid_ec2_requests() -> None:
    spec = load_fleet_spec(EXAMPLES / "aws-fleet.yaml")
    document = aws.render_aws(spec)
    model = ec2_model()
    for template in document["launch_templates"]:
        report = ParamValidator().validate({**template, "ClientToken": "x"},
                                           model.operation_model("CreateLaunchTemplate").input_shape)
        assert not report.has_errors(), report.generate_report()
    for group in document["placement_groups"]:
        report = ParamValidator().validate(group, model.operation_model("CreatePlacementGroup").input_shape)
        assert not report.has_errors(), report.generate_report()
    names = [t["LaunchTemplateName"] for t in document["launch_templates"]]
    assert names == ["rayfleet-aws-demo-head", "rayfleet-aws-demo-h100", "rayfleet-aws-demo-a100"]
    assert [g["GroupName"] for g in document["placement_groups"]] == ["rayfleet-aws-demo-h100", "rayfleet-aws-demo-a100"]


def test_user_data_scripts_parse_and_the_head_runs_the_same_spec() -> None:
    spec = load_fleet_spec(EXAMPLES / "aws-fleet.yaml")
    document = aws.render_aws(spec)
    head = base64.b64decode(document["launch_templates"][0]["LaunchTemplateData"]["UserData"]).decode()
    for script in [head, *document["worker_user_data"].values()]:
        syntax = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
        assert syntax.returncode == 0, syntax.stderr
    embedded = head.split("cat > /etc/rayfleet/fleet.yaml <<'RAYFLEET_EOF'\n")[1].split("RAYFLEET_EOF\n")[0]
    assert FleetSpec.model_validate(yaml.safe_load(embedded)) == spec
    assert "up -f /etc/rayfleet/fleet.yaml" in head and "/rayfleet/aws-demo/ray-token" in head


def test_iam_policies_grant_least_privilege() -> None:
    spec = load_fleet_spec(EXAMPLES / "aws-fleet.yaml")
    controller, node = aws.controller_policy(spec), aws.node_policy(spec)
    statements = controller["Statement"]

    def actions(statement: dict[str, Any]) -> list[str]:
        return [statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]

    every = [action for statement in statements for action in actions(statement)]
    assert all("*" not in action for action in every)  # no wildcard actions
    assert {a for a in every if a.startswith("ec2:")} == set(aws.CONTROLLER_EC2_ACTIONS)
    for statement in statements:
        assert statement["Effect"] == "Allow"
        if "ec2:TerminateInstances" in actions(statement) or "ec2:CreateLaunchTemplateVersion" in actions(statement):
            assert statement["Condition"] == {"StringEquals": {"aws:ResourceTag/rayfleet.io/fleet": "aws-demo"}}
        if statement["Resource"] == "*":
            assert all(action.startswith("ec2:Describe") for action in actions(statement))
    launches = [s for s in statements if s["Sid"] == "LaunchOnlyFleetTaggedInstances"]
    assert launches[0]["Condition"] == {"StringEquals": {"aws:RequestTag/rayfleet.io/fleet": "aws-demo"}}
    token = "arn:aws:ssm:us-east-1:*:parameter/rayfleet/aws-demo/ray-token"
    assert [s["Resource"] for s in statements if "ssm:GetParameter" in actions(s)] == [token]
    assert node["Statement"] == [{"Sid": "ReadRayToken", "Effect": "Allow", "Action": "ssm:GetParameter",
                                  "Resource": token}]
    [passing] = [s for s in statements if "iam:PassRole" in actions(s)]
    assert passing["Resource"] == "arn:aws:iam::*:role/rayfleet-aws-demo-node"


# --- a fleet of cells -----------------------------------------------------------------------------
def test_each_kubernetes_cell_is_a_valid_raycluster_named_for_its_cell_in_its_own_namespace() -> None:
    from rayfleet.cluster.render import cells

    spec = load_fleet_spec(EXAMPLES / "k8s-cells.yaml")
    rendered = cells.k8s_cell_objects(spec)
    assert [(cell.name, cell.spec.name) for cell, _ in rendered] == [("east", "k8s-cells-east"), ("west", "k8s-cells-west")]
    for (cell, objects), namespace in zip(rendered, ("rayfleet", "rayfleet-west")):
        for obj in objects:
            validate_object(obj)
        [cluster] = [o for o in objects if o["kind"] == "RayCluster"]
        assert cluster["metadata"]["name"] == cell.spec.name and cluster["metadata"]["namespace"] == namespace
        assert [g["groupName"] for g in cluster["spec"]["workerGroupSpecs"]] == list(cell.pools)
        [config] = [o for o in objects if o["kind"] == "ConfigMap"]
        on_head = FleetSpec.model_validate(yaml.safe_load(config["data"]["fleet.yaml"]))
        assert on_head.name == cell.spec.name and on_head.cells is None and on_head.pool_names == list(cell.pools)
        assert {o["metadata"]["namespace"] for o in objects if "namespace" in o["metadata"]} == {namespace}
    assert [cells.apply_command(cell, "DIR") for cell, _ in rendered] == [
        "kubectl --context gke-east apply -k DIR/k8s-cells-east", "kubectl --context gke-west apply -k DIR/k8s-cells-west"]
    files = cells.k8s_cells_files(spec)
    assert {name.split("/")[0] for name in files} == {"operator", "k8s-cells-east", "k8s-cells-west"}
    stream = list(yaml.safe_load_all(cells.k8s_cells_yaml(spec)))
    assert [o["metadata"]["name"] for o in stream if o["kind"] == "RayCluster"] == ["k8s-cells-east", "k8s-cells-west"]


def test_a_pool_split_by_max_nodes_per_cell_renders_its_share_in_each_cell() -> None:
    from rayfleet.cluster.render import cells

    spec = fleet_spec({"name": "h100", "accelerator": "H100", "gpus_per_node": 8, "max_nodes": 5, "nodes": 3},
                      name="big", provider="kubernetes", max_nodes_per_cell=3)
    groups = [[g for o in objects if o["kind"] == "RayCluster" for g in o["spec"]["workerGroupSpecs"]]
              for _, objects in cells.k8s_cell_objects(spec)]
    assert [(g["groupName"], g["replicas"], g["maxReplicas"]) for [g] in groups] == [("h100", 2, 3), ("h100", 1, 2)]


def test_each_aws_cell_runs_in_its_region_on_its_subnets_with_policies_for_its_own_fleet() -> None:
    from rayfleet.cluster.render import cells

    document = cells.aws_cells_document(load_fleet_spec(EXAMPLES / "aws-cells.yaml"))
    assert [(c["cell"], c["fleet"], c["region"]) for c in document["cells"]] == [
        ("east", "aws-cells-east", "us-east-1"), ("west", "aws-cells-west", "us-west-2")]
    model = ec2_model()
    for cell, subnet in zip(document["cells"], ("subnet-0a1b2c3d4e5f60718", "subnet-0f1e2d3c4b5a69788")):
        for template in cell["launch_templates"]:
            report = ParamValidator().validate({**template, "ClientToken": "x"},
                                               model.operation_model("CreateLaunchTemplate").input_shape)
            assert not report.has_errors(), report.generate_report()
            assert template["LaunchTemplateName"].startswith(f"rayfleet-{cell['fleet']}-")
            assert [n["SubnetId"] for n in template["LaunchTemplateData"]["NetworkInterfaces"]] == [subnet]
        statements = cell["iam"]["controller"]["policy"]["Statement"]
        [terminate] = [s for s in statements if s["Sid"] == "TerminateOnlyFleetInstances"]
        assert terminate["Resource"] == f"arn:aws:ec2:{cell['region']}:*:instance/*"
        assert terminate["Condition"] == {"StringEquals": {"aws:ResourceTag/rayfleet.io/fleet": cell["fleet"]}}
    files = cells.aws_cells_files(document)
    assert json.loads(files["aws.json"]) == document and "aws-cells-west/user-data/a100.sh" in files


def test_a_job_on_a_fleet_of_cells_is_refused_as_a_rayjob(tmp_path: Path) -> None:
    result = rayfleet("render", "k8s", "-f", str(EXAMPLES / "k8s-job.yaml"), "--fleet-file",
                      str(EXAMPLES / "k8s-cells.yaml"), home=tmp_path, timeout=120)
    assert result.returncode == 2 and "2 cells" in result.stderr and "rayfleet submit" in result.stderr, result.stderr


# --- through the CLI ----------------------------------------------------------------------------------
RENDERINGS = {  # committed folder under manifests/rendered -> the render command that makes it
    "aws-fleet": ("aws", "aws-fleet.yaml"),
    "k8s-fleet": ("k8s", "k8s-fleet.yaml"),
    "k8s-job": ("k8s", "k8s-job.yaml", "--fleet-file", str(EXAMPLES / "k8s-fleet.yaml")),
    "k8s-cells": ("k8s", "k8s-cells.yaml"),
    "aws-cells": ("aws", "aws-cells.yaml"),
}


def folder_files(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_committed_manifests_are_up_to_date_with_the_renderer(tmp_path: Path) -> None:
    """manifests/rendered/* is what `rayfleet render -o` writes for manifests/examples/*, and
    manifests/base is the shared part of every Kubernetes rendering, for namespace rayfleet."""
    update = os.environ.get("RAYFLEET_UPDATE_RENDERED") == "1"
    expected = {RENDERED / name: tmp_path / name for name in RENDERINGS}
    for name, (target, example, *more) in RENDERINGS.items():
        result = rayfleet("render", target, "-f", str(EXAMPLES / example), *more, "-o", str(tmp_path / name),
                          timeout=120)
        assert result.returncode == 0, result.stderr
        assert "wrote" in result.stdout
    base = tmp_path / "base"
    for file_name, content in k8s.as_files(k8s.base_objects("rayfleet")).items():
        base.mkdir(exist_ok=True)
        (base / file_name).write_text(content)
    expected[ROOT / "manifests" / "base"] = base
    for committed, fresh in expected.items():
        if update:
            shutil.rmtree(committed, ignore_errors=True)
            shutil.copytree(fresh, committed)
        assert folder_files(committed) == folder_files(fresh), (
            f"{committed} is stale: RAYFLEET_UPDATE_RENDERED=1 python -m pytest {__file__} -k up_to_date")
    kustomization = yaml.safe_load((RENDERED / "k8s-fleet" / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(f for f in folder_files(RENDERED / "k8s-fleet")
                                                        if f != "kustomization.yaml" and not f.startswith("operator/"))
    assert "storage.yaml" in kustomization["resources"]  # the fleet's claim; the operator is applied on its own


def test_no_rendered_output_contains_a_token(tmp_path: Path) -> None:
    """Even with a token in the environment and in a fleet folder, nothing rendered carries it."""
    home = tmp_path / "home"
    for fleet in ("aws-demo", "k8s-demo"):
        (home / "fleets" / fleet).mkdir(parents=True)
        (home / "fleets" / fleet / "auth_token").write_text(TOKEN)
    env = {"RAY_AUTH_TOKEN": TOKEN, "RAYFLEET_HOME": str(home)}
    outputs = []
    for target, example, *more in RENDERINGS.values():
        result = rayfleet("render", target, "-f", str(EXAMPLES / example), *more, env=env, timeout=120)
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout)
    committed = "".join(folder_files(RENDERED).values()) + "".join(folder_files(ROOT / "manifests" / "base").values())
    for text in [*outputs, committed]:
        assert TOKEN not in text
        assert "RAY_AUTH_TOKEN=" not in text and "RAY_AUTH_TOKEN:" not in text
    aws_doc = json.loads(outputs[0])
    scripts = [base64.b64decode(t["LaunchTemplateData"]["UserData"]).decode() for t in aws_doc["launch_templates"]
               if "UserData" in t["LaunchTemplateData"]] + list(aws_doc["worker_user_data"].values())
    assert all("get_parameter" in script or "fetch-token.py" in script for script in scripts)


# --- bad input: exit 2, naming the field ------------------------------------------------------------
AWS_POOL = {"name": "g", "accelerator": "A100", "gpus_per_node": 8, "max_nodes": 2,
            "provider": {"aws": {"instance_type": "p4d.24xlarge", "ami": "ami-0123456789abcdef0"}}}
K8S_POOL = {"name": "g", "accelerator": "H100", "gpus_per_node": 8, "max_nodes": 2}


def fleet(provider: str, pool: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": "bad", "provider": provider, "pools": [pool], **extra}


def with_aws(**changes: Any) -> dict[str, Any]:
    return {**AWS_POOL, "provider": {"aws": {**AWS_POOL["provider"]["aws"], **changes}}}


BAD_SPECS = [
    ("malformed AMI", fleet("aws", with_aws(ami="ami-XYZ")), "pools[0].provider.aws.ami", "ami-"),
    ("typo in the aws block", fleet("aws", with_aws(instance_typ="p5.48xlarge")),
     "pools[0].provider.aws.instance_typ", "did you mean 'instance_type'"),
    ("missing aws block", fleet("aws", K8S_POOL), "pools[0].provider.aws", "required when provider is aws"),
    ("GPU count unlike the instance type", fleet("aws", {**with_aws(), "gpus_per_node": 4}),
     "pools[0].provider.aws.instance_type", "gpus_per_node: 8"),
    ("bad subnet id", fleet("aws", with_aws(subnet_ids=["subnet-1"])), "pools[0].provider.aws.subnet_ids[0]", "subnet-"),
    ("bad SSM parameter", fleet("aws", AWS_POOL, aws={"token_ssm_parameter": "ray token"}),
     "aws.token_ssm_parameter", "/"),
    ("aws block on a kubernetes fleet", fleet("kubernetes", K8S_POOL, aws={"region": "us-east-1"}),
     "aws", "provider is kubernetes"),
    ("bad toleration operator",
     fleet("kubernetes", {**K8S_POOL, "provider": {"kubernetes": {"tolerations": [{"key": "a", "operator": "In"}]}}}),
     "pools[0].provider.kubernetes.tolerations[0].operator", "'Exists' or 'Equal'"),
    ("Exists toleration with a value",
     fleet("kubernetes", {**K8S_POOL, "provider": {"kubernetes": {"tolerations": [{"operator": "Exists", "value": "x"}]}}}),
     "pools[0].provider.kubernetes.tolerations[0]", "takes no value"),
    ("bad node selector key",
     fleet("kubernetes", {**K8S_POOL, "provider": {"kubernetes": {"node_selector": {"bad key!": "x"}}}}),
     "pools[0].provider.kubernetes.node_selector", "not a valid Kubernetes label key"),
    ("bad namespace", fleet("kubernetes", K8S_POOL, kubernetes={"namespace": "ML_Team"}), "kubernetes.namespace",
     "lower-case"),
]


@pytest.mark.parametrize("what,data,field,fix", BAD_SPECS, ids=[case[0] for case in BAD_SPECS])
def test_malformed_provider_blocks_are_refused_at_spec_load(tmp_path: Path, what: str, data: dict[str, Any],
                                                            field: str, fix: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(BadInput) as caught:
        load_fleet_spec(path)
    message = str(caught.value)
    assert str(path) in message and field in message and fix in message, message


@pytest.mark.parametrize("target,index", [("aws", 0), ("k8s", 7), ("aws", 3)])
def test_the_cli_exits_2_naming_the_field_of_a_malformed_provider_block(tmp_path: Path, target: str,
                                                                        index: int) -> None:
    what, data, field, fix = BAD_SPECS[index]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    result = rayfleet("render", target, "-f", str(path), timeout=120)
    assert result.returncode == 2, (what, result.stdout, result.stderr)
    assert field in result.stderr and fix in result.stderr.replace("\n", " ") and "Traceback" not in result.stderr
    assert result.stdout == ""


def test_the_cli_refuses_a_fleet_of_another_provider_and_a_job_without_its_fleet(tmp_path: Path) -> None:
    result = rayfleet("render", "aws", "-f", str(EXAMPLES / "k8s-fleet.yaml"), timeout=120)
    assert result.returncode == 2 and "provider: got 'kubernetes'" in result.stderr
    job = tmp_path / "job.yaml"
    job.write_text("name: j\npool: h100\n")
    result = rayfleet("render", "k8s", "-f", str(job), timeout=120)
    assert result.returncode == 2 and "--fleet-file" in result.stderr
    result = rayfleet("render", "k8s", "-f", str(job), "--fleet-file", str(EXAMPLES / "local-fleet.yaml"), timeout=120)
    assert result.returncode == 2 and "a RayJob runs on a kubernetes fleet" in result.stderr


def test_fault_tolerant_fleets_render_kuberay_gcs_fault_tolerance_without_the_password() -> None:
    data = yaml.safe_load((EXAMPLES / "k8s-fleet.yaml").read_text())
    data["head"]["fault_tolerance"] = {"enabled": True, "redis_address": "redis.rayfleet.svc:6379",
                                       "password_env": "REDIS_PASSWORD"}
    spec = FleetSpec.model_validate(data)
    cluster = k8s.ray_cluster(spec)
    validate_object(cluster)
    options = cluster["spec"]["gcsFaultToleranceOptions"]
    assert options["redisAddress"] == "redis.rayfleet.svc:6379" and options["externalStorageNamespace"] == "k8s-demo"
    assert options["redisPassword"] == {"valueFrom": {"secretKeyRef": {"name": "k8s-demo-redis-password",
                                                                       "key": "password"}}}
    assert "gcsFaultToleranceOptions" not in k8s.ray_cluster(FleetSpec.model_validate(
        yaml.safe_load((EXAMPLES / "k8s-fleet.yaml").read_text())))["spec"]
    data["head"]["fault_tolerance"] = {"enabled": True}
    with pytest.raises(Exception, match="redis_address is required on kubernetes"):
        FleetSpec.model_validate(data)
