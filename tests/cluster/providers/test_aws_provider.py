"""The AWS provider against a real HTTP EC2 endpoint: moto_server on 127.0.0.1, behind a proxy
that adds capacity errors, throttling, lost answers, client-token idempotency and spot
interruptions (see tests/support/moto_ec2.py). The controller loop is the production plan + act."""
from __future__ import annotations

import base64
import os
import subprocess
import time
from typing import Any, Iterator

import boto3
import pytest

from rayfleet.errors import ProviderError
from rayfleet.cluster.decide.plan import plan
from rayfleet.cluster.providers.aws import AwsProvider
from rayfleet.cluster.providers.aws.instances import client_token, to_instance
from rayfleet.cluster.providers.aws.provider import address_for_workers
from rayfleet.cluster.render.aws import CONTROLLER_EC2_ACTIONS, controller_policy
from rayfleet.cluster.spec.fleet import FleetSpec
from rayfleet.cluster.decide.state import FleetState
from rayfleet.cluster.decide.view import ClusterView, InstanceStatus
from tests.support.moto_ec2 import CREDENTIALS, Ec2Proxy, proxy_for, start_moto, stop_process
from tests.support.provider_harness import EmulatedRay, ProviderHarness
from tests.support.specs import fleet_spec

AMI = "ami-0123456789abcdef0"
HEAD = "10.0.0.10:6379"


def SPOT(params: dict[str, str]) -> bool:  # noqa: N802 (reads as a constant in the tests)
    return params.get("InstanceMarketOptions.MarketType") == "spot"


@pytest.fixture(scope="module")
def moto() -> Iterator[str]:
    saved = {key: os.environ.get(key) for key in CREDENTIALS}
    os.environ.update(CREDENTIALS)  # dummy credentials: botocore never looks further (no IMDS)
    process, url = start_moto()
    try:
        yield url
    finally:
        stop_process(process)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def proxy(moto: str) -> Iterator[Ec2Proxy]:
    yield from proxy_for(moto)


@pytest.fixture
def moto_ec2(moto: str) -> Any:
    """A client straight to moto, for looking at what the provider did (bypasses the proxy)."""
    return boto3.client("ec2", endpoint_url=moto, region_name="us-east-1")


def aws_spec(endpoint: str, a100: dict[str, Any] | None = None, **aws: Any) -> FleetSpec:
    gpu_pool = {"name": "a100", "accelerator": "A100", "gpus_per_node": 8, "cpus_per_node": 96, "memory": "1000Gi",
                "min_nodes": 0, "max_nodes": 4, "nodes": 2, "labels": {"team": "research"},
                "provider": {"aws": {"instance_type": "p4d.24xlarge", "ami": AMI, "spot": True}}}
    gpu_pool.update(a100 or {})
    cpu_pool = {"name": "cpu", "cpus_per_node": 4, "memory": "16Gi", "min_nodes": 0, "max_nodes": 2, "nodes": 1,
                "provider": {"aws": {"instance_type": "m6i.xlarge", "ami": AMI}}}
    return fleet_spec(gpu_pool, cpu_pool, name="aw", provider="aws",
                      aws={"endpoint_url": endpoint, "api_max_attempts": 3, **aws},
                      scaling={"loop_period_s": 0.1, "boot_timeout_s": 120})


def live(ec2: Any, pool: str | None = None) -> dict[str, dict[str, Any]]:
    """name -> description of the fleet's instances EC2 has not terminated."""
    filters = [{"Name": "tag:rayfleet.io/fleet", "Values": ["aw"]},
               {"Name": "instance-state-name", "Values": ["pending", "running"]}]
    if pool:
        filters.append({"Name": "tag:rayfleet.io/pool", "Values": [pool]})
    found = {}
    for reservation in ec2.describe_instances(Filters=filters)["Reservations"]:
        for item in reservation["Instances"]:
            found[{t["Key"]: t["Value"] for t in item["Tags"]}["rayfleet.io/instance"]] = item
    return found


# --- the acceptance test: the same controller and plan as the local provider ---------------------
def test_fleet_scales_up_and_down_replaces_a_dead_node_and_restarts_without_duplicates(
        proxy: Ec2Proxy, moto_ec2: Any) -> None:
    spec = aws_spec(proxy.url)
    controller = ProviderHarness(spec, AwsProvider(spec, HEAD), ray=EmulatedRay(join_delay_s=0.2))
    controller.run_until(controller.settled, 30, "2 a100 + 1 cpu nodes ready")
    assert sorted(live(moto_ec2)) == ["aw-a100-0001", "aw-a100-0002", "aw-cpu-0001"]

    controller.targets["a100"] = 4
    controller.run_until(controller.settled, 30, "4 a100 nodes ready")
    assert len(live(moto_ec2, "a100")) == 4

    controller.targets["a100"] = 1
    controller.run_until(lambda: controller.settled() and len(live(moto_ec2, "a100")) == 1, 30, "scale down to 1")
    assert sorted(live(moto_ec2, "a100")) == ["aw-a100-0001"]  # the newest went first
    assert len(controller.drains.drained) == 3  # each ready node was drained in Ray before it went

    controller.ray.mark_dead("aw-a100-0001", "XID 79: GPU fell off the bus")
    controller.run_until(lambda: controller.settled() and "aw-a100-0001" not in live(moto_ec2), 30,
                         "the dead node replaced")
    assert sorted(live(moto_ec2, "a100")) == ["aw-a100-0005"]
    assert any(e.kind == "replace" and "XID 79" in e.reason for e in controller.events)

    runs = proxy.count("RunInstances")
    restarted = controller.restarted(AwsProvider(spec, HEAD))  # a new process: no state, no caches
    restarted.run_until(restarted.settled, 30, "the restarted controller settled")
    for _ in range(5):
        restarted.tick()
    assert proxy.count("RunInstances") == runs and restarted.launched() == []
    assert sorted(e.instance for e in restarted.events if e.kind == "adopt") == ["aw-a100-0005", "aw-cpu-0001"]
    assert sorted(live(moto_ec2)) == ["aw-a100-0005", "aw-cpu-0001"]


# --- what a launch sends ------------------------------------------------------------------------
def test_launch_uses_the_pool_template_tags_client_token_placement_group_and_user_data(
        proxy: Ec2Proxy, moto_ec2: Any) -> None:
    spec = aws_spec(proxy.url)
    provider = AwsProvider(spec, HEAD)
    [instance] = provider.launch(spec.pool("a100"), ["aw-a100-0001"])
    described = live(moto_ec2)["aw-a100-0001"]
    tags = {t["Key"]: t["Value"] for t in described["Tags"]}
    assert {key: tags[key] for key in ("rayfleet.io/fleet", "rayfleet.io/pool", "rayfleet.io/role",
                                       "rayfleet.io/instance")} == {
        "rayfleet.io/fleet": "aw", "rayfleet.io/pool": "a100", "rayfleet.io/role": "worker",
        "rayfleet.io/instance": "aw-a100-0001"}
    assert (instance.id, instance.provider_id, instance.spot) == ("aw-a100-0001", described["InstanceId"], True)
    assert described["ClientToken"] == "aw-a100-0001"
    assert (described["InstanceType"], described["ImageId"]) == ("p4d.24xlarge", AMI)  # from the template
    assert tags["aws:ec2launchtemplate:id"]  # launched from the pool's launch template
    assert proxy.placement_groups == {"rayfleet-aw-a100": "cluster"}
    [version] = moto_ec2.describe_launch_template_versions(LaunchTemplateName="rayfleet-aw-a100")["LaunchTemplateVersions"]
    assert version["LaunchTemplateData"]["Placement"] == {"GroupName": "rayfleet-aw-a100"}

    encoded = moto_ec2.describe_instance_attribute(InstanceId=instance.provider_id, Attribute="userData")
    script = base64.b64decode(encoded["UserData"]["Value"]).decode()
    assert f"--address={HEAD}" in script
    assert ("--labels=rayfleet.io/fleet=aw,rayfleet.io/pool=a100,team=research,rayfleet.io/accelerator=A100,"
            "rayfleet.io/instance=aw-a100-0001") in script
    assert """--resources={"accelerator_type:A100": 1.0}""" in script and "--num-gpus=8" in script
    assert "RAYFLEET_TOKEN_PARAMETER=/rayfleet/aw/ray-token" in script and "RAY_AUTH_MODE=token" in script
    assert "RAY_AUTH_TOKEN=" not in script
    syntax = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
    assert syntax.returncode == 0, syntax.stderr
    assert provider.instances()[0].status is InstanceStatus.RUNNING


def test_the_controller_policy_allows_exactly_the_ec2_calls_the_provider_makes(proxy: Ec2Proxy) -> None:
    spec = aws_spec(proxy.url)
    provider = AwsProvider(spec, HEAD)
    provider.launch(spec.pool("a100"), ["aw-a100-0001"])
    changed = aws_spec(proxy.url, a100={"provider": {"aws": {"instance_type": "p4d.24xlarge", "ami": AMI,
                                                             "spot": True, "root_volume_gb": 500}}})
    AwsProvider(changed, HEAD).launch(changed.pool("a100"), ["aw-a100-0002"])  # a new template version
    provider.instances()
    provider.terminate(["aw-a100-0001", "aw-a100-0002"], wait=True)
    called = {f"ec2:{action}" for action in proxy.actions()}
    allowed = {action for statement in controller_policy(spec)["Statement"]
               for action in ([statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"])}
    assert called <= allowed, called - allowed
    # Nothing granted that the provider does not use (CreateTags is authorised at launch, not called).
    assert set(CONTROLLER_EC2_ACTIONS) - {"ec2:CreateTags"} == called


def test_an_unchanged_pool_reuses_its_template_version_and_a_changed_one_gets_a_new_version(
        proxy: Ec2Proxy, moto_ec2: Any) -> None:
    spec = aws_spec(proxy.url)
    AwsProvider(spec, HEAD).launch(spec.pool("a100"), ["aw-a100-0001"])
    AwsProvider(spec, HEAD).launch(spec.pool("a100"), ["aw-a100-0002"])  # another controller, same spec
    assert proxy.count("CreateLaunchTemplate") == 1 and proxy.count("CreateLaunchTemplateVersion") == 0
    assert proxy.count("CreatePlacementGroup") == 1
    bigger = aws_spec(proxy.url, a100={"provider": {"aws": {"instance_type": "p4d.24xlarge", "ami": AMI,
                                                            "root_volume_gb": 500}}})
    AwsProvider(bigger, HEAD).launch(bigger.pool("a100"), ["aw-a100-0003"])
    assert proxy.count("CreateLaunchTemplateVersion") == 1
    tags = {t["Key"]: t["Value"] for t in live(moto_ec2)["aw-a100-0003"]["Tags"]}
    assert tags["aws:ec2launchtemplate:version"] == "2"


# --- spot and capacity --------------------------------------------------------------------------
def test_spot_without_capacity_falls_back_to_on_demand_and_stays_there_for_a_while(proxy: Ec2Proxy) -> None:
    spec = aws_spec(proxy.url, spot_retry_after_s=600)
    clock = [1000.0]
    provider = AwsProvider(spec, HEAD, clock=lambda: clock[0])
    # EC2 answers InsufficientInstanceCapacity with a 500, which botocore retries: every try fails.
    proxy.fail("RunInstances", "InsufficientInstanceCapacity", times=3, when=SPOT)
    [first] = provider.launch(spec.pool("a100"), ["aw-a100-0001"])
    assert not first.spot and first.status is not InstanceStatus.TERMINATED
    assert proxy.count("RunInstances", SPOT) == 3  # botocore's tries, then the on-demand one
    assert proxy.count("RunInstances", lambda p: p["ClientToken"] == "aw-a100-0001.od") == 1
    [second] = provider.launch(spec.pool("a100"), ["aw-a100-0002"])
    assert not second.spot and proxy.count("RunInstances", SPOT) == 3  # spot not even tried
    clock[0] += 601
    [third] = provider.launch(spec.pool("a100"), ["aw-a100-0003"])
    assert third.spot


def test_a_spot_interruption_is_reported_and_the_replacement_launches_on_demand(
        proxy: Ec2Proxy, moto_ec2: Any) -> None:
    spec = aws_spec(proxy.url)
    provider = AwsProvider(spec, HEAD)
    [spot] = provider.launch(spec.pool("a100"), ["aw-a100-0001"])
    assert spot.spot
    proxy.interrupt(moto_ec2, spot.provider_id)
    [seen] = provider.instances()
    assert (seen.status, seen.detail) == (InstanceStatus.TERMINATED, "spot interruption")
    [replacement] = provider.launch(spec.pool("a100"), ["aw-a100-0002"])
    assert not replacement.spot


def test_no_on_demand_capacity_is_a_provider_error_and_the_planner_backs_off(proxy: Ec2Proxy) -> None:
    spec = aws_spec(proxy.url, a100={"nodes": 0})
    proxy.fail("RunInstances", "InsufficientInstanceCapacity", times=3)
    with pytest.raises(ProviderError, match="no capacity.*InsufficientInstanceCapacity"):
        AwsProvider(spec, HEAD).launch(spec.pool("cpu"), ["aw-cpu-0001"])
    proxy.fail("RunInstances", "InsufficientInstanceCapacity", times=3)
    controller = ProviderHarness(spec, AwsProvider(spec, HEAD))
    controller.tick()  # launches aw-cpu-0001 again; EC2 still has no capacity
    controller.tick()  # the planner reads the error: failed, and no new launch while it backs off
    assert [e.kind for e in controller.events] == ["launch", "failed"]
    assert "InsufficientInstanceCapacity" in controller.events[1].message
    assert controller.state.pool_failures["cpu"][0] == 1


def test_throttled_calls_are_retried_with_backoff_then_reported(proxy: Ec2Proxy) -> None:
    spec = aws_spec(proxy.url)
    provider = AwsProvider(spec, HEAD)
    proxy.fail("DescribeInstances", "RequestLimitExceeded", times=1, status=503)
    assert provider.instances() == []
    assert proxy.count("DescribeInstances") == 2
    impatient = aws_spec(proxy.url, api_max_attempts=2)
    proxy.fail("DescribeInstances", "RequestLimitExceeded", times=2, status=503)
    with pytest.raises(ProviderError, match="RequestLimitExceeded"):
        AwsProvider(impatient, HEAD).instances()


# --- idempotency: crashes and lost answers --------------------------------------------------------
def test_a_lost_run_instances_answer_is_retried_with_the_same_token_and_launches_once(
        proxy: Ec2Proxy, moto_ec2: Any) -> None:
    spec = aws_spec(proxy.url)
    proxy.fail("RunInstances", "InternalError", forward_first=True)  # EC2 launched it; the answer was lost
    [instance] = AwsProvider(spec, HEAD).launch(spec.pool("cpu"), ["aw-cpu-0001"])
    assert proxy.count("RunInstances", lambda p: p["ClientToken"] == "aw-cpu-0001") == 2
    assert list(live(moto_ec2)) == ["aw-cpu-0001"] and instance.provider_id == live(moto_ec2)["aw-cpu-0001"]["InstanceId"]


def test_a_crash_between_deciding_and_launching_relaunches_the_same_names_once(
        proxy: Ec2Proxy, moto_ec2: Any) -> None:
    spec = aws_spec(proxy.url)
    # The controller persisted its plan (write-ahead), then crashed before acting: EC2 has nothing.
    decided = plan(spec, FleetState(), ClusterView(ray_nodes=(), instances=()), time.time())
    names = sorted(decided.state.nodes)
    assert names == ["aw-a100-0001", "aw-a100-0002", "aw-cpu-0001"]
    resumed = ProviderHarness(spec, AwsProvider(spec, HEAD), state=decided.state)
    resumed.tick()
    assert live(moto_ec2) == {} and resumed.launched() == []  # the requests still count as capacity
    resumed.skip(31)  # past RELAUNCH_AFTER_S: the same names are asked for again
    resumed.run_until(resumed.settled, 30, "the decided nodes launched after the restart")
    assert sorted(live(moto_ec2)) == names and proxy.count("RunInstances") == 3

    # A crash right after acting: the state says "requested", EC2 has them. Nothing is launched twice.
    again = resumed.restarted(AwsProvider(spec, HEAD), keep_state=True)
    again.state = FleetState(nodes={n: r for n, r in decided.state.nodes.items()}, sequence=decided.state.sequence)
    again.run_until(again.settled, 30, "the launched nodes found after the restart")
    AwsProvider(spec, HEAD).launch(spec.pool("a100"), ["aw-a100-0001", "aw-a100-0002"])
    assert proxy.count("RunInstances") == 3 and sorted(live(moto_ec2)) == names


def test_terminate_is_idempotent_ignores_unknown_names_and_can_wait(proxy: Ec2Proxy, moto_ec2: Any) -> None:
    spec = aws_spec(proxy.url)
    provider = AwsProvider(spec, HEAD)
    provider.launch(spec.pool("cpu"), ["aw-cpu-0001", "aw-cpu-0002"])
    provider.terminate(["aw-cpu-0001", "aw-cpu-9999"], wait=True)
    provider.terminate(["aw-cpu-0001"])
    assert list(live(moto_ec2)) == ["aw-cpu-0002"]
    gone = {i.id: i for i in provider.instances()}["aw-cpu-0001"]
    assert gone.status is InstanceStatus.TERMINATED and "shutdown" in gone.detail.lower()
    assert proxy.count("TerminateInstances") == 1  # the second call found nothing left to end


# --- pure parts -----------------------------------------------------------------------------------
def test_long_names_get_hashed_client_tokens_within_ec2s_limit() -> None:
    name = f"{'f' * 32}-{'p' * 32}-0001"
    assert len(client_token(name)) <= 64 and client_token(name) != client_token(name, on_demand_fallback=True)
    assert client_token("aw-a100-0001") == "aw-a100-0001"


def test_instance_descriptions_map_to_instances() -> None:
    description = {"InstanceId": "i-1", "State": {"Name": "terminated"}, "InstanceLifecycle": "spot",
                   "StateReason": {"Code": "Server.SpotInstanceTermination", "Message": "x"},
                   "Tags": [{"Key": "rayfleet.io/instance", "Value": "f-p-0001"}, {"Key": "rayfleet.io/pool", "Value": "p"}]}
    instance = to_instance(description)
    assert (instance.id, instance.pool, instance.status, instance.detail, instance.spot) == \
        ("f-p-0001", "p", InstanceStatus.TERMINATED, "spot interruption", True)


def test_workers_are_told_a_head_address_they_can_reach() -> None:
    assert address_for_workers("10.1.2.3:6379") == "10.1.2.3:6379"
    resolved = address_for_workers("127.0.0.1:6379")  # this machine's routable address, if it has one
    assert resolved.endswith(":6379") and (resolved == "127.0.0.1:6379" or not resolved.startswith("127."))
    spec = aws_spec("http://127.0.0.1:1")
    provider = AwsProvider.from_runtime(spec, {"gcs_address": "10.9.8.7:7000", "fleet_dir": "/tmp/x"})
    assert provider.head_address == "10.9.8.7:7000"
