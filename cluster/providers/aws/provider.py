"""The AWS provider: one EC2 instance per rayfleet instance name, launched from pool templates.

- Idempotent by name: an instance carries its name as the tag `rayfleet.io/instance` and as its
  RunInstances ClientToken. `launch` first looks the names up by tag and launches only the missing
  ones; the client token makes even a retried call whose answer was lost launch nothing twice.
- After a controller restart, `instances()` lists the fleet's tagged workers and the planner adopts
  them; nothing is launched again.
- Spot with on-demand fallback: a spot launch refused for capacity (or a pool that just lost spot
  instances to interruptions) launches on-demand for `aws.spot_retry_after_s`.
- Throttling and 5xx answers are retried by botocore's standard retry mode (exponential backoff
  with jitter, `aws.api_max_attempts` tries), not by code of ours.
- boto3 is imported only here, when the first EC2 call is made.
"""
from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

from rayfleet.errors import ProviderError
from rayfleet.cluster.providers.aws.instances import (
    CAPACITY_ERRORS,
    client_token,
    error_code,
    is_worker,
    newest_per_name,
    tag_map,
    to_instance,
    was_interrupted,
)
from rayfleet.cluster.render.aws import (
    aws_settings,
    instance_tag_specifications,
    placement_group,
    placement_group_name,
    pool_settings,
    uses_placement_group,
    worker_launch_template,
    worker_user_data,
)
from rayfleet.cluster.spec.fleet import FleetSpec, PoolSpec
from rayfleet.cluster.decide.view import Instance
from rayfleet.names import FLEET_LABEL, INSTANCE_LABEL, POOL_LABEL, ROLE_LABEL

log = logging.getLogger(__name__)

FILTER_VALUES_MAX = 200
"""DescribeInstances accepts at most 200 values per filter."""

TERMINATE_WAIT = {"Delay": 5, "MaxAttempts": 120}
"""`terminate(wait=True)`: poll every 5 s for up to 10 min (EC2 usually ends an instance in < 2 min)."""

SPOT_OPTIONS = {"MarketType": "spot",
                "SpotOptions": {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}}


class AwsProvider:
    """Launch, list and terminate one fleet's EC2 workers (see the module docstring)."""

    def __init__(self, spec: FleetSpec, head_address: str, ec2: Any = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.spec = spec
        self.fleet = spec.name
        self.aws = aws_settings(spec)
        self.head_address = head_address
        self._ec2 = ec2
        self._clock = clock
        self._lock = threading.Lock()
        self._template_versions: dict[str, tuple[str, str]] = {}   # pool -> (fingerprint, version)
        self._placement_groups: set[str] = set()
        self._spot_paused_until: dict[str, float] = {}             # pool -> clock time
        self._interruptions_seen: set[str] = set()

    @classmethod
    def from_runtime(cls, spec: FleetSpec, runtime: Mapping[str, Any]) -> AwsProvider:
        """The controller runs on the head instance: workers join the head's private address."""
        return cls(spec, head_address=address_for_workers(str(runtime["gcs_address"])))

    @property
    def ec2(self) -> Any:
        if self._ec2 is None:
            import boto3
            from botocore.config import Config

            config = Config(retries={"mode": "standard", "total_max_attempts": self.aws.api_max_attempts},
                            connect_timeout=5, read_timeout=60)
            self._ec2 = boto3.session.Session().client(
                "ec2", region_name=self.aws.region, endpoint_url=self.aws.endpoint_url, config=config)
        return self._ec2

    # --- the interface ------------------------------------------------------------------------
    def launch(self, pool: PoolSpec, names: Sequence[str]) -> list[Instance]:
        if not names:
            return []
        with self._errors(f"launch in pool {pool.name}"):
            version = self._prepare(pool)
            known = newest_per_name(self._describe(names))
        launched: list[Instance] = []
        failures: dict[str, str] = {}
        for name in names:
            if name in known:  # launched before (maybe by a controller that crashed): not again
                launched.append(to_instance(known[name]))
                continue
            try:
                launched.append(self._run(pool, name, version))
            except ProviderError as error:
                failures[name] = str(error)
        if failures and not launched:
            raise ProviderError("; ".join(failures.values()))
        for name, error in failures.items():  # the planner asks again for these after RELAUNCH_AFTER_S
            log.warning("launch of %s failed (others of the batch launched): %s", name, error)
        return launched

    def terminate(self, names: Sequence[str], wait: bool = False) -> None:
        if not names:
            return
        with self._errors("terminate"):
            ids = [d["InstanceId"] for d in self._describe(names) if d["State"]["Name"] != "terminated"]
            for start in range(0, len(ids), 1000):  # TerminateInstances takes up to 1000 ids
                try:
                    self.ec2.terminate_instances(InstanceIds=ids[start:start + 1000])
                except Exception as error:
                    if not error_code(error).startswith("InvalidInstanceID.NotFound"):
                        raise
            log.info("terminating %d EC2 instances of fleet %s", len(ids), self.fleet)
            if wait and ids:
                self.ec2.get_waiter("instance_terminated").wait(InstanceIds=ids, WaiterConfig=TERMINATE_WAIT)

    def instances(self) -> list[Instance]:
        with self._errors("list instances"):
            chosen = newest_per_name(self._describe())
        for description in chosen.values():
            self._note_interruption(description)
        return [to_instance(description) for description in chosen.values()]

    # --- launching ----------------------------------------------------------------------------
    def _run(self, pool: PoolSpec, name: str, version: str) -> Instance:
        settings = pool_settings(pool)
        spot = settings.spot and not self._spot_paused(pool.name)
        try:
            return self._run_instance(pool, name, version, spot=spot)
        except Exception as error:
            if not _from_aws(error):
                raise
            code = error_code(error)
            if spot and settings.spot_fallback_on_demand and code in CAPACITY_ERRORS:
                log.warning("no spot capacity for %s in pool %s (%s): launching on demand", name, pool.name, code)
                self._pause_spot(pool.name)
                return self._run_once_more_on_demand(pool, name, version)
            raise self._launch_error(pool, name, error) from None

    def _run_once_more_on_demand(self, pool: PoolSpec, name: str, version: str) -> Instance:
        try:
            return self._run_instance(pool, name, version, spot=False)
        except Exception as error:
            if not _from_aws(error):
                raise
            raise self._launch_error(pool, name, error) from None

    def _run_instance(self, pool: PoolSpec, name: str, version: str, spot: bool) -> Instance:
        settings = pool_settings(pool)
        params: dict[str, Any] = {
            "MinCount": 1, "MaxCount": 1,
            "ClientToken": client_token(name, on_demand_fallback=settings.spot and not spot),
            "LaunchTemplate": {"LaunchTemplateName": worker_launch_template(self.spec, pool)["LaunchTemplateName"],
                               "Version": version},
            "UserData": worker_user_data(self.spec, pool, name, self.head_address),  # botocore base64-encodes it
            "TagSpecifications": instance_tag_specifications(self.fleet, pool.name, name),
        }
        if spot:
            params["InstanceMarketOptions"] = SPOT_OPTIONS
        response = self.ec2.run_instances(**params)
        instance = to_instance(response["Instances"][0])
        log.info("launched %s as %s (%s, %s)", name, instance.provider_id, settings.instance_type,
                 "spot" if spot else "on-demand")
        return instance

    def _launch_error(self, pool: PoolSpec, name: str, error: Exception) -> ProviderError:
        code = error_code(error) or type(error).__name__
        kind = "no capacity" if code in CAPACITY_ERRORS else "EC2 refused the launch"
        return ProviderError(f"{kind}: {name} ({pool_settings(pool).instance_type}, pool {pool.name}): "
                             f"{code}: {_message(error)}")

    # --- spot -------------------------------------------------------------------------------
    def _spot_paused(self, pool: str) -> bool:
        return self._clock() < self._spot_paused_until.get(pool, float("-inf"))

    def _pause_spot(self, pool: str) -> None:
        self._spot_paused_until[pool] = self._clock() + self.aws.spot_retry_after_s

    def _note_interruption(self, description: Mapping[str, Any]) -> None:
        instance_id = str(description.get("InstanceId"))
        if was_interrupted(description) and instance_id not in self._interruptions_seen:
            self._interruptions_seen.add(instance_id)
            pool = tag_map(description).get(POOL_LABEL, "")
            log.warning("spot instance %s of pool %s was interrupted: launching on demand for %.0fs",
                        instance_id, pool, self.aws.spot_retry_after_s)
            self._pause_spot(pool)

    # --- templates and placement groups (created once, idempotently) ---------------------------
    def _prepare(self, pool: PoolSpec) -> str:
        """Make sure the pool's placement group and launch template exist; the template version."""
        with self._lock:
            if uses_placement_group(pool):
                self._ensure_placement_group(pool)
            return self._ensure_template(pool)

    def _ensure_placement_group(self, pool: PoolSpec) -> None:
        name = placement_group_name(self.fleet, pool.name)
        if name in self._placement_groups:
            return
        try:
            self.ec2.describe_placement_groups(GroupNames=[name])
        except Exception as error:
            if error_code(error) != "InvalidPlacementGroup.Unknown":
                raise
            try:
                self.ec2.create_placement_group(**placement_group(self.spec, pool))
                log.info("created cluster placement group %s", name)
            except Exception as create_error:  # another controller made it first: fine
                if error_code(create_error) != "InvalidPlacementGroup.Duplicate":
                    raise
        self._placement_groups.add(name)

    def _ensure_template(self, pool: PoolSpec) -> str:
        template = worker_launch_template(self.spec, pool)
        wanted = template["VersionDescription"]
        cached = self._template_versions.get(pool.name)
        if cached and cached[0] == wanted:
            return cached[1]
        name = template["LaunchTemplateName"]
        versions = self._template_versions_of(name)
        same = [v["VersionNumber"] for v in versions if v.get("VersionDescription") == wanted]
        if same:
            version = str(max(same))
        elif not versions:
            try:
                created = self.ec2.create_launch_template(**template, ClientToken=wanted[-32:])
                version = str(created["LaunchTemplate"]["LatestVersionNumber"])
                log.info("created launch template %s", name)
            except Exception as error:
                if "AlreadyExists" not in error_code(error):
                    raise
                return self._ensure_template(pool)  # made by another controller meanwhile
        else:
            created = self.ec2.create_launch_template_version(
                LaunchTemplateName=name, VersionDescription=wanted,
                LaunchTemplateData=template["LaunchTemplateData"], ClientToken=wanted[-32:])
            version = str(created["LaunchTemplateVersion"]["VersionNumber"])
            log.info("launch template %s: new version %s for the changed pool spec", name, version)
        self._template_versions[pool.name] = (wanted, version)
        return version

    def _template_versions_of(self, name: str) -> list[dict[str, Any]]:
        try:
            pages = self.ec2.get_paginator("describe_launch_template_versions").paginate(LaunchTemplateName=name)
            return [version for page in pages for version in page["LaunchTemplateVersions"]]
        except Exception as error:
            if "NotFound" in error_code(error):
                return []
            raise

    # --- describing ---------------------------------------------------------------------------
    def _describe(self, names: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """The fleet's worker instances (every state EC2 still reports), optionally only `names`."""
        base = [{"Name": f"tag:{FLEET_LABEL}", "Values": [self.fleet]},
                {"Name": f"tag:{ROLE_LABEL}", "Values": ["worker"]}]
        if names is None:
            chunks: list[list[dict[str, Any]]] = [base]
        else:
            unique = sorted(set(names))
            chunks = [base + [{"Name": f"tag:{INSTANCE_LABEL}", "Values": unique[i:i + FILTER_VALUES_MAX]}]
                      for i in range(0, len(unique), FILTER_VALUES_MAX)]
        found = []
        for filters in chunks:
            for page in self.ec2.get_paginator("describe_instances").paginate(Filters=filters):
                for reservation in page["Reservations"]:
                    found.extend(d for d in reservation["Instances"] if is_worker(d))
        return found

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """EC2 and network failures become ProviderError (exit 1 at the CLI, logged by the loop)."""
        try:
            yield
        except ProviderError:
            raise
        except Exception as error:
            if not _from_aws(error):
                raise
            code = error_code(error) or type(error).__name__
            raise ProviderError(f"AWS {what} for fleet {self.fleet} failed: {code}: {_message(error)}") from None


def _from_aws(error: BaseException) -> bool:
    """An error of the AWS SDK or the network under it (not a bug of ours)."""
    return type(error).__module__.startswith(("botocore", "boto3", "urllib3"))


def _message(error: BaseException) -> str:
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Message", "")) or str(error)


def address_for_workers(gcs_address: str) -> str:
    """The head's GCS address as other machines reach it: a loopback host becomes the private IP
    of this machine's primary interface (a UDP `connect` sends nothing; it only picks the route)."""
    host, _, port = gcs_address.rpartition(":")
    if host not in ("127.0.0.1", "localhost", "0.0.0.0", "::1", "[::1]"):
        return gcs_address
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("10.255.255.255", 1))
            return f"{probe.getsockname()[0]}:{port}"
    except OSError:
        return gcs_address
