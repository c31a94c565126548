"""The fleet spec: one YAML file in, validated typed objects out.

Validation happens here and only here (pydantic v2). Everything after `load_fleet_spec` receives a
`FleetSpec` and trusts it. A bad spec raises `BadInput` whose message names the file, the field
path, the bad value and what would be accepted; the CLI turns that into exit code 2.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from cluster.errors import BadInput
from cluster.spec_errors import describe_validation_error, load_yaml_mapping

NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$"
"""DNS-label-like names: they become Ray labels, EC2 tags and Kubernetes object names."""

# Accelerators we know the figures of. Peak dense bf16 TFLOP/s from the vendors' datasheets
# (H100 SXM 989, H200 989, A100 312, L40S 362, L4 121, A10G 70 (31.2 dense fp16 x ~2.2 sparsity-free
# est. from AWS), T4 65 fp16); used for MFU and for the matmul burn check's expected figure.
ACCELERATOR_PEAK_TFLOPS: dict[str, float] = {
    "H100": 989.0,
    "H200": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10G": 70.0,
    "T4": 65.0,
}

_QUANTITY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]i?|[kmgtp]i?)?[Bb]?\s*$")
_FACTORS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "p": 10**15,
            "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40, "pi": 2**50}


def parse_bytes(value: Any) -> int:
    """'64Gi' / '512M' / 1073741824 -> bytes (Kubernetes quantity suffixes)."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 64Gi, 512Mi or a number of bytes")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return int(value)
    if isinstance(value, str):
        match = _QUANTITY.match(value)
        if match:
            number, unit = match.groups()
            return int(float(number) * _FACTORS[(unit or "").lower()])
    raise ValueError("expected a size such as 64Gi, 512Mi or a number of bytes")


Bytes = Annotated[int, BeforeValidator(parse_bytes)]


class Strict(BaseModel):
    """Unknown keys are errors: a typo in a spec must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class FaultTolerance(Strict):
    """GCS fault tolerance through an external Redis (see the head fault-tolerance issue)."""

    enabled: bool = False
    redis_address: str | None = Field(
        default=None, description="host:port of an existing Redis; empty = rayfleet starts one (local)")
    password_env: str | None = Field(default=None, description="environment variable holding the password")
    password_file: str | None = Field(default=None, description="file holding the password")

    @model_validator(mode="after")
    def _one_password_source(self) -> FaultTolerance:
        if self.password_env and self.password_file:
            raise ValueError("give password_env or password_file, not both")
        return self


class HeadSpec(Strict):
    cpus: float = Field(default=1, ge=0, description="CPUs the head node advertises to Ray")
    dashboard_host: str = Field(default="127.0.0.1", description="where the dashboard and job API listen")
    dashboard_port: int | None = Field(default=None, ge=1024, le=65535, description="empty: a free port")
    port: int | None = Field(default=None, ge=1024, le=65535, description="GCS port; empty: a free port")
    address: str | None = Field(
        default=None, description="host:port of an existing head to use instead of starting one")
    fault_tolerance: FaultTolerance = FaultTolerance()

    @field_validator("address")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[A-Za-z0-9.\-]+:\d{2,5}$", value):
            raise ValueError("expected host:port, e.g. 10.0.0.5:6379")
        return value


class LocalPoolProvider(Strict):
    object_store_memory: Bytes = Field(
        default=200 * 2**20, description="object store per local node; small, as all nodes share one machine")
    env: dict[str, str] = Field(default_factory=dict, description="extra environment for the node's processes")

    @field_validator("object_store_memory")
    @classmethod
    def _ray_minimum(cls, value: int) -> int:
        if value < 80 * 2**20:  # Ray refuses object stores under 75 MiB
            raise ValueError("must be at least 80Mi (Ray refuses smaller object stores)")
        return value


class AwsPoolProvider(Strict):
    instance_type: str = Field(description="EC2 instance type, e.g. p5.48xlarge")
    ami: str = Field(pattern=r"^ami-[0-9a-f]{8,17}$", description="AMI with Ray and rayfleet installed")
    subnet_ids: list[str] = Field(default_factory=list)
    security_group_ids: list[str] = Field(default_factory=list)
    key_name: str | None = None
    iam_instance_profile: str | None = None
    spot: bool = False
    spot_fallback_on_demand: bool = True
    placement_group: bool | None = Field(default=None, description="cluster placement group; default: on for GPU pools")
    root_volume_gb: int = Field(default=200, ge=8, le=16384)


class KubernetesPoolProvider(Strict):
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    image: str | None = Field(default=None, description="worker image; default: the fleet's image")
    priority_class: str | None = None


class PoolProvider(Strict):
    local: LocalPoolProvider | None = None
    aws: AwsPoolProvider | None = None
    kubernetes: KubernetesPoolProvider | None = None


class PoolSpec(Strict):
    name: str = Field(pattern=NAME_PATTERN, description="lower-case letters, digits and '-'")
    accelerator: str | None = Field(default=None, description="GPU model, e.g. H100; empty for CPU pools")
    gpus_per_node: int = Field(default=0, ge=0, le=16)
    cpus_per_node: float = Field(default=1, gt=0, le=1024)
    memory: Bytes = Field(default=4 * 2**30, description="memory per node, e.g. 64Gi")
    min_nodes: int = Field(default=0, ge=0)
    max_nodes: int = Field(default=1, ge=0, le=100_000)
    nodes: int | None = Field(default=None, ge=0, description="desired nodes; empty: min_nodes")
    hot_spares: int = Field(default=0, ge=0, description="ready spare nodes kept beside the pool")
    labels: dict[str, str] = Field(default_factory=dict, description="extra Ray node labels")
    expected_tflops: float | None = Field(
        default=None, gt=0, description="matmul TFLOP/s a healthy GPU reaches; default from the accelerator")
    max_unavailable: int = Field(default=1, ge=0, description="nodes of this pool remediation may take down at once")
    idle_timeout_s: float | None = Field(default=None, ge=0, description="override of scaling.idle_timeout_s")
    provider: PoolProvider = PoolProvider()

    @field_validator("accelerator")
    @classmethod
    def _known_accelerator(cls, value: str | None) -> str | None:
        if value is not None and value not in ACCELERATOR_PEAK_TFLOPS:
            raise ValueError(f"unknown accelerator; use one of {', '.join(ACCELERATOR_PEAK_TFLOPS)}")
        return value

    @field_validator("labels")
    @classmethod
    def _label_keys(cls, labels: dict[str, str]) -> dict[str, str]:
        for key, value in labels.items():
            if key.startswith("rayfleet.io/") or key.startswith("ray.io/"):
                raise ValueError(f"label {key!r} is reserved (rayfleet.io/ and ray.io/ are set by rayfleet)")
            if not re.match(r"^[A-Za-z0-9]([A-Za-z0-9_./-]{0,61}[A-Za-z0-9])?$", key):
                raise ValueError(f"label key {key!r} is not a valid label key")
            if not re.match(r"^([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?$", str(value)):
                raise ValueError(f"label value {value!r} of {key!r} is not a valid label value")
        return labels

    @model_validator(mode="after")
    def _consistent(self) -> PoolSpec:
        if self.max_nodes < self.min_nodes:
            raise ValueError(f"max_nodes ({self.max_nodes}) is less than min_nodes ({self.min_nodes}); "
                             "set max_nodes >= min_nodes")
        if self.nodes is not None and not self.min_nodes <= self.nodes <= self.max_nodes:
            raise ValueError(f"nodes ({self.nodes}) must lie within min_nodes..max_nodes "
                             f"({self.min_nodes}..{self.max_nodes})")
        if self.accelerator and self.gpus_per_node == 0:
            raise ValueError(f"accelerator {self.accelerator} needs gpus_per_node of at least 1")
        if self.gpus_per_node and not self.accelerator:
            raise ValueError("gpus_per_node is set but accelerator is empty; name the GPU model, e.g. H100")
        return self

    @property
    def desired(self) -> int:
        """Nodes the spec asks for before any manual target or autoscaling."""
        return self.min_nodes if self.nodes is None else self.nodes

    @property
    def peak_tflops(self) -> float | None:
        return ACCELERATOR_PEAK_TFLOPS.get(self.accelerator or "")


class HealthPolicy(Strict):
    """Thresholds that turn check results into healthy / degraded / unhealthy."""

    check_interval_s: float = Field(default=5.0, gt=0, le=3600)
    heartbeat_timeout_s: float = Field(default=3.0, gt=0, description="agent silence before a node is suspect")
    confirm_window_s: float = Field(default=10.0, ge=0, description="suspicion confirmed over this window")
    max_gpu_temperature_c: float = Field(default=87.0, gt=0, le=120)
    min_tflops_fraction: float = Field(default=0.7, gt=0, le=1, description="burn below this x expected: degraded")
    straggler_fraction: float = Field(default=0.7, gt=0, le=1, description="below this x median bandwidth: straggler")
    max_disk_used_fraction: float = Field(default=0.95, gt=0, le=1)
    max_memory_used_fraction: float = Field(default=0.97, gt=0, le=1)
    max_replacements_per_hour: int = Field(default=10, ge=0, description="per pool; stops replacement storms")
    use_spares_first: bool = True


class ScalingPolicy(Strict):
    loop_period_s: float = Field(default=1.0, gt=0, le=60, description="controller reconcile period")
    boot_timeout_s: float = Field(default=300.0, gt=0, description="a node not joined by then is replaced")
    idle_timeout_s: float = Field(default=600.0, ge=0, description="idle nodes above the floor are removed after")
    upscaling_speed: int = Field(default=16, ge=1, description="nodes per pool launched per loop at most")
    autoscale: bool = Field(default=False, description="size pools from Ray's pending demand")


class AwsFleet(Strict):
    region: str = Field(default="us-east-1", pattern=r"^[a-z]{2}(-gov)?-[a-z]+-\d$")
    endpoint_url: str | None = Field(default=None, description="EC2 endpoint override (tests use moto_server)")


class KubernetesFleet(Strict):
    namespace: str = Field(default="rayfleet", pattern=NAME_PATTERN)
    image: str = Field(default="rayproject/ray:2.60.0-py311", description="Ray image with rayfleet installed")
    context: str | None = None


class FleetSpec(Strict):
    name: str = Field(pattern=NAME_PATTERN, description="lower-case letters, digits and '-'")
    provider: Literal["local", "aws", "kubernetes"] = "local"
    head: HeadSpec = HeadSpec()
    storage: str | None = Field(
        default=None, description="checkpoint storage every node can reach; default: a folder of the fleet")
    pools: list[PoolSpec] = Field(min_length=1)
    health: HealthPolicy = HealthPolicy()
    scaling: ScalingPolicy = ScalingPolicy()
    aws: AwsFleet | None = None
    kubernetes: KubernetesFleet | None = None

    @model_validator(mode="after")
    def _consistent(self) -> FleetSpec:
        names = [pool.name for pool in self.pools]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"pool names must be unique; {', '.join(duplicates)} appears more than once")
        for index, pool in enumerate(self.pools):
            for other in ("local", "aws", "kubernetes"):
                if other != self.provider and getattr(pool.provider, other) is not None:
                    raise ValueError(f"pools[{index}].provider.{other} is given but the fleet's provider is "
                                     f"{self.provider}; use provider.{self.provider} or change provider")
            if self.provider == "aws" and pool.provider.aws is None:
                raise ValueError(f"pools[{index}].provider.aws is required when provider is aws "
                                 "(instance_type and ami at least)")
        return self

    def pool(self, name: str) -> PoolSpec:
        for pool in self.pools:
            if pool.name == name:
                return pool
        raise KeyError(name)

    @property
    def pool_names(self) -> list[str]:
        return [pool.name for pool in self.pools]


def load_fleet_spec(path: str | Path) -> FleetSpec:
    """Read and validate a fleet YAML file; raise BadInput naming file, field, value and fix."""
    data = load_yaml_mapping(path, kind="fleet spec")
    try:
        return FleetSpec.model_validate(data)
    except ValidationError as error:
        raise BadInput(describe_validation_error(path, error, data, FleetSpec)) from None


def fleet_spec_from_json(text: str) -> FleetSpec:
    """Rebuild a spec that rayfleet itself stored (already validated once)."""
    return FleetSpec.model_validate_json(text)


def fleet_json_schema() -> dict[str, Any]:
    return FleetSpec.model_json_schema()
