"""What rayfleet asks EC2 for: launch templates, user-data, placement groups and IAM policies.

Pure: values in, dicts and text out. The AWS provider launches from exactly these values and
`rayfleet render aws` prints them, so what a user reviews is what runs.

Secrets: the Ray auth token is never in a template or user-data. Nodes read it at boot from the
SSM SecureString `aws.token_ssm_parameter`, and the IAM policies grant `ssm:GetParameter` on
exactly that parameter.
"""
from __future__ import annotations

import base64
import hashlib
import json
import shlex
from typing import Any

import yaml

from rayfleet.cluster.decide.plan import instance_name
from rayfleet.cluster.render.ray_node import labels_argument, node_labels, number, resources_argument
from rayfleet.cluster.spec.fleet import AwsFleet, AwsPoolProvider, FleetSpec, PoolSpec
from rayfleet.names import FLEET_LABEL, INSTANCE_LABEL, POOL_LABEL, ROLE_LABEL
# ROLE_LABEL, a tag here, is `head` or `worker`: the provider lists and terminates workers only, never the head it runs on.

FINGERPRINT_PREFIX = "rayfleet:"
"""A launch template version's description holds the hash of its data: a changed spec makes a
new version, an unchanged one reuses the current version (creating templates is idempotent)."""

HEAD_ADDRESS_PLACEHOLDER = "HEAD_PRIVATE_IP:GCS_PORT"


# --- names ----------------------------------------------------------------------------------
def launch_template_name(fleet: str, pool: str) -> str:
    return f"rayfleet-{fleet}-{pool}"


def placement_group_name(fleet: str, pool: str) -> str:
    return f"rayfleet-{fleet}-{pool}"


def aws_settings(spec: FleetSpec) -> AwsFleet:
    return spec.aws or AwsFleet()


def pool_settings(pool: PoolSpec) -> AwsPoolProvider:
    if pool.provider.aws is None:  # the spec refuses an aws fleet with such a pool; a bug if reached
        raise ValueError(f"pool {pool.name} has no provider.aws block")
    return pool.provider.aws


def uses_placement_group(pool: PoolSpec) -> bool:
    """GPU pools default to a cluster placement group: one low-latency network spine for NCCL
    (EC2 cluster placement groups, https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/placement-strategies.html)."""
    chosen = pool_settings(pool).placement_group
    return pool.gpus_per_node > 0 if chosen is None else chosen


def _partition(region: str) -> str:
    if region.startswith("cn-"):
        return "aws-cn"
    return "aws-us-gov" if "-gov-" in region else "aws"


def tags(pairs: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": key, "Value": value} for key, value in pairs.items()]


def worker_tags(fleet: str, pool: str) -> dict[str, str]:
    return {FLEET_LABEL: fleet, POOL_LABEL: pool, ROLE_LABEL: "worker"}


def instance_tag_specifications(fleet: str, pool: str, instance: str) -> list[dict[str, Any]]:
    """Tags given at RunInstances: the instance's own name rides on the instance and its volumes."""
    pairs = {**worker_tags(fleet, pool), INSTANCE_LABEL: instance, "Name": instance}
    return [{"ResourceType": kind, "Tags": tags(pairs)} for kind in ("instance", "volume")]


# --- launch templates -------------------------------------------------------------------------
def _network(settings: AwsPoolProvider) -> dict[str, Any]:
    if settings.subnet_ids:
        interface: dict[str, Any] = {"DeviceIndex": 0, "SubnetId": settings.subnet_ids[0]}
        if settings.security_group_ids:
            interface["Groups"] = list(settings.security_group_ids)
        return {"NetworkInterfaces": [interface]}
    return {"SecurityGroupIds": list(settings.security_group_ids)} if settings.security_group_ids else {}


def _metadata_options() -> dict[str, Any]:
    # IMDSv2 only; hop limit 2 so containers on the node still reach it (AWS's recommendation for
    # containerised workloads, https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/instancedata-data-retrieval.html).
    return {"HttpTokens": "required", "HttpEndpoint": "enabled", "HttpPutResponseHopLimit": 2}


def worker_template_data(spec: FleetSpec, pool: PoolSpec) -> dict[str, Any]:
    """LaunchTemplateData of a pool. User-data is given per launch: it names the instance."""
    aws = aws_settings(spec)
    settings = pool_settings(pool)
    data: dict[str, Any] = {
        "ImageId": settings.ami,
        "InstanceType": settings.instance_type,
        "IamInstanceProfile": {"Name": settings.iam_instance_profile or aws.node_profile(spec.name)},
        "BlockDeviceMappings": [{"DeviceName": settings.root_device_name,
                                 "Ebs": {"VolumeSize": settings.root_volume_gb, "VolumeType": "gp3",
                                         "DeleteOnTermination": True, "Encrypted": True}}],
        "MetadataOptions": _metadata_options(),
        "InstanceInitiatedShutdownBehavior": "terminate",
        "TagSpecifications": [{"ResourceType": kind, "Tags": tags(worker_tags(spec.name, pool.name))}
                              for kind in ("instance", "volume")],
        **_network(settings),
    }
    if settings.key_name:
        data["KeyName"] = settings.key_name
    if uses_placement_group(pool):
        data["Placement"] = {"GroupName": placement_group_name(spec.name, pool.name)}
    return data


def head_template_data(spec: FleetSpec) -> dict[str, Any]:
    """The head instance: runs the Ray head and the controller (`rayfleet up` on it)."""
    aws = aws_settings(spec)
    first = pool_settings(spec.pools[0])
    return {
        "ImageId": aws.head_ami or first.ami,
        "InstanceType": aws.head_instance_type,
        "IamInstanceProfile": {"Name": aws.head_profile(spec.name)},
        # The head keeps Ray's logs, the GCS and the fleet folder, no datasets: 100 GB is ample.
        "BlockDeviceMappings": [{"DeviceName": first.root_device_name,
                                 "Ebs": {"VolumeSize": 100, "VolumeType": "gp3",
                                         "DeleteOnTermination": True, "Encrypted": True}}],
        "MetadataOptions": _metadata_options(),
        # EC2 moves the head to healthy hardware on a system-check failure, keeping its address and
        # volume; on boot its unit runs `rayfleet up` again, whose supervisor also restarts a head
        # process that dies. With head.fault_tolerance (an external Redis) no worker is lost.
        "MaintenanceOptions": {"AutoRecovery": "default"},
        "TagSpecifications": [{"ResourceType": kind,
                               "Tags": tags({FLEET_LABEL: spec.name, ROLE_LABEL: "head",
                                             "Name": f"{spec.name}-head"})}
                              for kind in ("instance", "volume")],
        "UserData": base64.b64encode(head_user_data(spec).encode()).decode(),
        **_network(first),
        **({"KeyName": first.key_name} if first.key_name else {}),
    }


def fingerprint(data: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
    return f"{FINGERPRINT_PREFIX}{digest}"


def launch_template(name: str, fleet: str, data: dict[str, Any]) -> dict[str, Any]:
    """CreateLaunchTemplate's parameters (without ClientToken)."""
    return {"LaunchTemplateName": name, "VersionDescription": fingerprint(data), "LaunchTemplateData": data,
            "TagSpecifications": [{"ResourceType": "launch-template", "Tags": tags({FLEET_LABEL: fleet})}]}


def worker_launch_template(spec: FleetSpec, pool: PoolSpec) -> dict[str, Any]:
    return launch_template(launch_template_name(spec.name, pool.name), spec.name, worker_template_data(spec, pool))


def placement_group(spec: FleetSpec, pool: PoolSpec) -> dict[str, Any]:
    """CreatePlacementGroup's parameters."""
    return {"GroupName": placement_group_name(spec.name, pool.name), "Strategy": "cluster",
            "TagSpecifications": [{"ResourceType": "placement-group", "Tags": tags({FLEET_LABEL: spec.name})}]}


# --- user-data --------------------------------------------------------------------------------
_FETCH_TOKEN = '''\
"""Write the Ray auth token from SSM (SecureString) to a 0600 file; the token never touches user-data."""
import os

import boto3

name, path = os.environ["RAYFLEET_TOKEN_PARAMETER"], os.environ["RAYFLEET_TOKEN_FILE"]
value = boto3.client("ssm").get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
with os.fdopen(fd, "w") as handle:
    handle.write(value)
'''


def _file(path: str, content: str, mode: str = "0644") -> str:
    """Shell that writes `content` to `path` (a quoted heredoc: nothing in it is expanded)."""
    marker = "RAYFLEET_EOF"
    if any(line == marker for line in content.splitlines()):
        raise ValueError(f"{path}: content holds the heredoc marker {marker}")
    body = content if content.endswith("\n") else content + "\n"
    return f"install -d -m 0755 {shlex.quote(path.rsplit('/', 1)[0])}\n" \
           f"cat > {shlex.quote(path)} <<'{marker}'\n{body}{marker}\nchmod {mode} {shlex.quote(path)}\n"


def _unit(description: str, pre: str, start: str, oneshot: bool = False) -> str:
    kind = "Type=oneshot\nRemainAfterExit=yes\n" if oneshot else "Restart=on-failure\nRestartSec=5\n"
    return ("[Unit]\n"
            f"Description={description}\n"
            "After=network-online.target\nWants=network-online.target\n\n"
            "[Service]\n"
            "EnvironmentFile=/etc/rayfleet/node.env\n"
            f"ExecStartPre={pre}\n"
            f"ExecStart={start}\n"
            f"{kind}\n"
            "[Install]\nWantedBy=multi-user.target\n")


def _environment(aws: AwsFleet, fleet: str, token_file: str, extra: dict[str, str]) -> str:
    values = {"AWS_DEFAULT_REGION": aws.region, "RAYFLEET_TOKEN_PARAMETER": aws.token_parameter(fleet),
              "RAYFLEET_TOKEN_FILE": token_file, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": token_file,
              "RAY_USAGE_STATS_ENABLED": "0", **extra}
    return "".join(f"{key}={value}\n" for key, value in values.items())


def ray_start_command(spec: FleetSpec, pool: PoolSpec, instance: str, head_address: str) -> list[str]:
    """The worker's `ray start`: the pool's resources and the labels that join node and instance."""
    ray = f"{aws_settings(spec).ray_bin_dir}/ray"
    # No CPUs at start: the controller admits the node (resizes its CPUs to cpus_per_node) once
    # its health agent reported it healthy; a hot spare stays unadmitted until promoted.
    return [ray, "start", "--block", f"--address={head_address}",
            "--num-cpus=0", f"--num-gpus={pool.gpus_per_node}",
            f"--memory={pool.memory}", f"--resources={resources_argument(pool)}",
            f"--labels={labels_argument(node_labels(spec.name, pool, instance))}",
            "--disable-usage-stats"]


def worker_user_data(spec: FleetSpec, pool: PoolSpec, instance: str, head_address: str) -> str:
    """Boot script of one worker: a systemd unit that fetches the token and runs `ray start`."""
    aws = aws_settings(spec)
    python = f"{aws.ray_bin_dir}/python"
    start = " ".join(shlex.quote(part) for part in ray_start_command(spec, pool, instance, head_address))
    return (
        "#!/bin/bash\n"
        f"# rayfleet worker {instance} (fleet {spec.name}, pool {pool.name}); rendered by cluster/render/aws.py.\n"
        f"# The Ray auth token is not in this script: the unit reads it from SSM {aws.token_parameter(spec.name)}.\n"
        "set -euo pipefail\n"
        + _file("/etc/rayfleet/node.env", _environment(aws, spec.name, "/run/rayfleet/ray-token", {}), "0600")
        + _file("/etc/rayfleet/fetch-token.py", _FETCH_TOKEN)
        + _file("/etc/rayfleet/start-node.sh", f"#!/bin/bash\nexec {start}\n", "0755")
        + _file("/etc/systemd/system/rayfleet-node.service",
                _unit(f"rayfleet Ray worker {instance}", f"{python} /etc/rayfleet/fetch-token.py",
                      "/etc/rayfleet/start-node.sh"))
        + "systemctl daemon-reload\nsystemctl enable --now rayfleet-node.service\n"
    )


def head_spec_yaml(spec: FleetSpec) -> str:
    """The spec the head's `rayfleet up` reads (it holds no secret; validated again there)."""
    return yaml.safe_dump(spec.model_dump(mode="json", exclude_none=True), sort_keys=False)


def head_user_data(spec: FleetSpec) -> str:
    """Boot script of the head: fetch the token into the fleet folder, then `rayfleet up` there.

    `rayfleet up` creates a fleet token only when the file is absent (cluster/head/fleetdir.py), so the
    head and every worker share the SSM token.
    """
    aws = aws_settings(spec)
    home = "/var/lib/rayfleet"
    token_file = f"{home}/fleets/{spec.name}/auth_token"
    rayfleet = f"{aws.ray_bin_dir}/rayfleet"
    return (
        "#!/bin/bash\n"
        f"# rayfleet head of fleet {spec.name}: Ray head + controller; rendered by cluster/render/aws.py.\n"
        f"# The Ray auth token is not in this script: it is read from SSM {aws.token_parameter(spec.name)}.\n"
        "set -euo pipefail\n"
        + _file("/etc/rayfleet/node.env", _environment(aws, spec.name, token_file, {"RAYFLEET_HOME": home}), "0600")
        + _file("/etc/rayfleet/fetch-token.py", _FETCH_TOKEN)
        + _file("/etc/rayfleet/fleet.yaml", head_spec_yaml(spec))
        + _file("/etc/systemd/system/rayfleet-head.service",
                _unit(f"rayfleet head of fleet {spec.name}", f"{aws.ray_bin_dir}/python /etc/rayfleet/fetch-token.py",
                      f"{rayfleet} up -f /etc/rayfleet/fleet.yaml --no-wait", oneshot=True))
        + "systemctl daemon-reload\nsystemctl enable --now rayfleet-head.service\n"
    )


# --- IAM --------------------------------------------------------------------------------------
CONTROLLER_EC2_ACTIONS = (
    "ec2:RunInstances", "ec2:TerminateInstances", "ec2:CreateTags", "ec2:CreateLaunchTemplate",
    "ec2:CreateLaunchTemplateVersion", "ec2:CreatePlacementGroup", "ec2:DescribeInstances",
    "ec2:DescribeLaunchTemplateVersions", "ec2:DescribePlacementGroups",
)
"""Every EC2 action the controller's policy allows; tests check the provider calls no other."""


def _token_arn(spec: FleetSpec) -> str:
    aws = aws_settings(spec)
    # An SSM parameter's ARN is the name without its leading slash after "parameter/".
    return f"arn:{_partition(aws.region)}:ssm:{aws.region}:*:parameter/{aws.token_parameter(spec.name).lstrip('/')}"


def _read_token_statement(spec: FleetSpec) -> dict[str, Any]:
    # With the AWS managed key aws/ssm no kms:Decrypt grant is needed; a customer key would need one.
    return {"Sid": "ReadRayToken", "Effect": "Allow", "Action": "ssm:GetParameter", "Resource": _token_arn(spec)}


def controller_policy(spec: FleetSpec) -> dict[str, Any]:
    """Least privilege for the controller on the head: launch and end only this fleet's workers."""
    aws = aws_settings(spec)
    arn = f"arn:{_partition(aws.region)}:ec2:{aws.region}:*"
    fleet_request = {"StringEquals": {f"aws:RequestTag/{FLEET_LABEL}": spec.name}}
    fleet_resource = {"StringEquals": {f"aws:ResourceTag/{FLEET_LABEL}": spec.name}}
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "LaunchFromFleetTemplates", "Effect": "Allow", "Action": "ec2:RunInstances",
         "Resource": f"{arn}:launch-template/*", "Condition": fleet_resource},
        {"Sid": "LaunchOnlyFleetTaggedInstances", "Effect": "Allow", "Action": "ec2:RunInstances",
         "Resource": [f"{arn}:instance/*", f"{arn}:volume/*"], "Condition": fleet_request},
        {"Sid": "LaunchUsingNetworkAndImages", "Effect": "Allow", "Action": "ec2:RunInstances",
         "Resource": [f"arn:{_partition(aws.region)}:ec2:{aws.region}::image/*", f"{arn}:subnet/*",
                      f"{arn}:security-group/*", f"{arn}:network-interface/*", f"{arn}:key-pair/*",
                      f"{arn}:placement-group/rayfleet-{spec.name}-*"]},
        {"Sid": "TagOnlyWhileCreating", "Effect": "Allow", "Action": "ec2:CreateTags",
         "Resource": [f"{arn}:instance/*", f"{arn}:volume/*", f"{arn}:launch-template/*",
                      f"{arn}:placement-group/*"],
         "Condition": {"StringEquals": {"ec2:CreateAction": ["RunInstances", "CreateLaunchTemplate",
                                                             "CreatePlacementGroup"]}}},
        {"Sid": "CreateFleetTemplatesAndGroups", "Effect": "Allow",
         "Action": ["ec2:CreateLaunchTemplate", "ec2:CreatePlacementGroup"],
         "Resource": [f"{arn}:launch-template/*", f"{arn}:placement-group/*"], "Condition": fleet_request},
        {"Sid": "VersionFleetTemplates", "Effect": "Allow", "Action": "ec2:CreateLaunchTemplateVersion",
         "Resource": f"{arn}:launch-template/*", "Condition": fleet_resource},
        {"Sid": "TerminateOnlyFleetInstances", "Effect": "Allow", "Action": "ec2:TerminateInstances",
         "Resource": f"{arn}:instance/*", "Condition": fleet_resource},
        # EC2's Describe* actions take no resource-level permissions: "*" is the only resource.
        {"Sid": "Describe", "Effect": "Allow",
         "Action": ["ec2:DescribeInstances", "ec2:DescribeLaunchTemplateVersions", "ec2:DescribePlacementGroups"],
         "Resource": "*"},
        {"Sid": "PassOnlyTheNodeRole", "Effect": "Allow", "Action": "iam:PassRole",
         "Resource": f"arn:{_partition(aws.region)}:iam::*:role/{aws.node_role_name(spec.name)}",
         "Condition": {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}},
        _read_token_statement(spec),
    ]}


def node_policy(spec: FleetSpec) -> dict[str, Any]:
    """A worker may read the Ray token and nothing else."""
    return {"Version": "2012-10-17", "Statement": [_read_token_statement(spec)]}


# --- the whole rendering ----------------------------------------------------------------------
def render_aws(spec: FleetSpec) -> dict[str, Any]:
    """Everything `rayfleet render aws` prints: templates, placement groups, IAM, example user-data."""
    aws = aws_settings(spec)
    head = launch_template(f"rayfleet-{spec.name}-head", spec.name, head_template_data(spec))
    return {
        "fleet": spec.name,
        "region": aws.region,
        "token_ssm_parameter": aws.token_parameter(spec.name),
        "launch_templates": [head, *(worker_launch_template(spec, pool) for pool in spec.pools)],
        "placement_groups": [placement_group(spec, pool) for pool in spec.pools if uses_placement_group(pool)],
        "iam": {
            "controller": {"instance_profile": aws.head_profile(spec.name), "policy": controller_policy(spec)},
            "node": {"instance_profile": aws.node_profile(spec.name), "role": aws.node_role_name(spec.name),
                     "policy": node_policy(spec)},
        },
        # User-data is given per launch (it names the instance); shown for each pool's first
        # instance, with the head's address left as a placeholder the provider fills in.
        "worker_user_data": {pool.name: worker_user_data(spec, pool, instance_name(spec.name, pool.name, 1),
                                                         HEAD_ADDRESS_PLACEHOLDER) for pool in spec.pools},
    }


def as_files(document: dict[str, Any]) -> dict[str, str]:
    """`rayfleet render aws -o DIR`: the whole document, and its parts in the forms tools take."""
    head = document["launch_templates"][0]
    files = {
        "aws.json": json.dumps(document, indent=2) + "\n",
        "launch-templates.json": json.dumps(document["launch_templates"], indent=2) + "\n",
        "iam-controller-policy.json": json.dumps(document["iam"]["controller"]["policy"], indent=2) + "\n",
        "iam-node-policy.json": json.dumps(document["iam"]["node"]["policy"], indent=2) + "\n",
        "user-data/head.sh": base64.b64decode(head["LaunchTemplateData"]["UserData"]).decode(),
    }
    for pool, script in document["worker_user_data"].items():
        files[f"user-data/{pool}.sh"] = script
    return files
