"""The fleet spec: one YAML file in, validated typed objects out.

Validation happens here and only here (pydantic v2). Everything after `load_fleet_spec` receives a
`FleetSpec` and trusts it. A bad spec raises `BadInput` whose message names the file, the field
path, the bad value and what would be accepted; the CLI turns that into exit code 2.
"""
from __future__ import annotations

import functools
import importlib.util
import re
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from typing import Annotated, Any, Callable, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from rayfleet.errors import BadInput
from rayfleet.names import RESERVED_LABEL_PREFIXES
from rayfleet.cluster.spec.capabilities import Capabilities, ProviderKind, capabilities
from rayfleet.cluster.spec.cell_split import auto_cell_name, pack
from rayfleet.cluster.spec.reading import describe_validation_error, load_yaml_mapping

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

def _kubernetes_parse_quantity() -> Callable[[Any], Decimal]:
    """The Kubernetes client's own quantity parser (kubernetes/utils/quantity.py), loaded from its
    file: importing it through `kubernetes.utils` imports the whole API client (0.6 s), and every
    spec read would pay for that. The module needs only `decimal`."""
    spec = importlib.util.find_spec("kubernetes")
    if spec is None or not spec.submodule_search_locations:
        raise BadInput("sizes are parsed by the Kubernetes client library, which is not installed; "
                       "pip install 'kubernetes>=30' (a dependency of rayfleet)")
    path = Path(spec.submodule_search_locations[0]) / "utils" / "quantity.py"
    module_spec = importlib.util.spec_from_file_location("rayfleet_k8s_quantity", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.parse_quantity


_parse_quantity = functools.cache(_kubernetes_parse_quantity)
# What the schema accepts as a string: Kubernetes' quantity grammar (apimachinery's
# resource.Quantity), less the sign (a size is never negative): a decimal, an optional exponent (1e9) or suffix (Ki..Ei, n u m k M G T P E).
_QUANTITY_PATTERN = r"^\+?([0-9]+(\.[0-9]*)?|\.[0-9]+)(([eE][+-]?[0-9]+)|(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E))?$"


def parse_bytes(value: Any) -> int:
    """'64Gi' / '512M' / '1e9' / 1073741824 -> bytes, parsed as Kubernetes parses quantities and
    rounded up to a whole byte as Kubernetes does (so '512m', 0.512, is 1 byte)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError("expected a size such as 64Gi, 512Mi, 1e9 or a number of bytes")
    if isinstance(value, str) and not re.fullmatch(_QUANTITY_PATTERN, value.strip()):
        # (the spec reader puts the value before the message: "memory: got 'lots': expected ...")
        raise ValueError("expected a size such as 64Gi, 512Mi, 1e9 or a number of bytes (a Kubernetes quantity)")
    try:
        number = _parse_quantity()(value.strip() if isinstance(value, str) else value)
    except (ValueError, ArithmeticError):
        raise ValueError("expected a size such as 64Gi, 512Mi, 1e9 or a number of bytes") from None
    if number < 0:
        raise ValueError("a size cannot be negative")
    return int(number.to_integral_value(rounding=ROUND_CEILING))


Bytes = Annotated[int, BeforeValidator(parse_bytes), WithJsonSchema({
    "anyOf": [{"type": "integer", "minimum": 0},
              {"type": "string", "pattern": _QUANTITY_PATTERN}],
    "description": "bytes, or a Kubernetes quantity: 64Gi, 512Mi, 2G, 1e9"})]
"""A size: written as in Kubernetes (a string with a suffix) or as bytes; validated to bytes."""

# S3's bucket naming rules (3-63 characters: lower-case letters, digits, '.', '-'; a letter or digit
# at each end): https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html
_S3_URL_PATTERN = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$"


def parse_s3_url(value: Any) -> str:
    """'s3://bucket' or 's3://bucket/prefix/' -> the URL without a trailing '/'."""
    if not isinstance(value, str) or not re.fullmatch(_S3_URL_PATTERN, value):
        raise ValueError("expected s3://BUCKET or s3://BUCKET/PREFIX (a bucket name of 3-63 lower-case letters, "
                         "digits, '.' and '-'); a shared path for checkpoints is the fleet's storage")
    return value.rstrip("/")


S3Url = Annotated[str, BeforeValidator(parse_s3_url), WithJsonSchema({
    "type": "string", "pattern": _S3_URL_PATTERN, "description": "s3://BUCKET or s3://BUCKET/PREFIX"})]
"""An S3 location (any S3-compatible store): a bucket and an optional key prefix."""


class Strict(BaseModel):
    """Unknown keys are errors: a typo in a spec must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class FaultTolerance(Strict):
    """GCS fault tolerance through an external Redis: a lost head is restarted with its state.

    The password comes from an environment variable or a file, never from the spec itself, and
    rayfleet never writes it into a log, a manifest or the GCS. For a local fleet without
    `redis_address`, `rayfleet up` starts a Redis on 127.0.0.1 and makes a password file for it.
    """

    enabled: bool = False
    redis_address: str | None = Field(
        default=None, description="host:port of an existing Redis; empty: rayfleet starts one (local fleets)")
    password_env: str | None = Field(default=None, description="environment variable holding the password")
    password_file: str | None = Field(default=None, description="file holding the password")
    reconnect_timeout_s: float = Field(
        default=120.0, ge=5, le=3600,
        description="how long worker raylets wait for a restarted head (RAY_gcs_rpc_server_reconnect_timeout_s; "
                    "Ray's default 60)")

    @model_validator(mode="after")
    def _one_password_source(self) -> FaultTolerance:
        if self.password_env and self.password_file:
            raise ValueError("give password_env or password_file, not both")
        if self.redis_address and not (self.password_env or self.password_file):
            raise ValueError("an external redis_address needs its password: set password_env or password_file")
        if self.redis_address is not None and not re.match(r"^[A-Za-z0-9.\-]+:\d{2,5}$", self.redis_address):
            raise ValueError("redis_address: expected host:port, e.g. 10.0.0.7:6379")
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
    """How one pool's EC2 instances are launched (see cluster/render/aws.py for the template)."""

    # GPUs of the EC2 instance types rayfleet knows, from the AWS instance type pages
    # (https://aws.amazon.com/ec2/instance-types/p5/, /p4/, /g6e/, /g6/, /g5/, /g4/): a pool whose
    # instance_type is listed must declare the same accelerator and GPU count, or Ray would
    # advertise GPUs the machine does not have.
    KNOWN_GPUS: ClassVar[dict[str, tuple[str, int]]] = {
        "p5.48xlarge": ("H100", 8),
        "p5e.48xlarge": ("H200", 8),
        "p5en.48xlarge": ("H200", 8),
        "p4d.24xlarge": ("A100", 8),
        "p4de.24xlarge": ("A100", 8),
        "g6e.xlarge": ("L40S", 1),
        "g6e.12xlarge": ("L40S", 4),
        "g6e.48xlarge": ("L40S", 8),
        "g6.xlarge": ("L4", 1),
        "g6.12xlarge": ("L4", 4),
        "g6.48xlarge": ("L4", 8),
        "g5.xlarge": ("A10G", 1),
        "g5.12xlarge": ("A10G", 4),
        "g5.48xlarge": ("A10G", 8),
        "g4dn.xlarge": ("T4", 1),
        "g4dn.12xlarge": ("T4", 4),
    }

    instance_type: str = Field(pattern=r"^[a-z][a-z0-9-]*\.[a-z0-9]+$", description="EC2 instance type, e.g. p5.48xlarge")
    ami: str = Field(pattern=r"^ami-[0-9a-f]{8,17}$", description="AMI with Ray and rayfleet installed")
    subnet_ids: list[Annotated[str, Field(pattern=r"^subnet-[0-9a-f]{8,17}$")]] = Field(
        default_factory=list, description="the first is used (a cluster placement group lives in one AZ)")
    security_group_ids: list[Annotated[str, Field(pattern=r"^sg-[0-9a-f]{8,17}$")]] = Field(default_factory=list)
    key_name: str | None = None
    iam_instance_profile: str | None = Field(
        default=None, description="instance profile of the nodes; default: aws.node_instance_profile")
    spot: bool = False
    spot_fallback_on_demand: bool = True
    placement_group: bool | None = Field(default=None, description="cluster placement group; default: on for GPU pools")
    root_volume_gb: int = Field(default=200, ge=8, le=16384)
    root_device_name: str = Field(default="/dev/sda1", pattern=r"^/dev/[a-z0-9]+$",
                                  description="the AMI's root device (/dev/sda1 on Ubuntu DLAMIs, /dev/xvda on AL2023)")


class Toleration(Strict):
    """A Kubernetes toleration (core/v1 Toleration), checked here so a typo fails at spec load."""

    # Kubernetes label syntax (apimachinery validation: optional DNS-subdomain prefix, 63-character name).
    LABEL_KEY: ClassVar[str] = r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
    LABEL_VALUE: ClassVar[str] = r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$"

    key: str | None = Field(default=None, pattern=LABEL_KEY)
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = Field(default=None, pattern=LABEL_VALUE)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    tolerationSeconds: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _exists_has_no_value(self) -> Toleration:
        if self.operator == "Exists" and self.value:
            raise ValueError("operator Exists takes no value; remove value or use operator Equal")
        return self


class KubernetesPoolProvider(Strict):
    """How one pool's worker group is scheduled (see cluster/render/k8s.py for the defaults)."""

    node_selector: dict[str, str] = Field(
        default_factory=dict, description="merged over the accelerator's default nvidia.com/gpu.product selector")
    tolerations: list[Toleration] = Field(
        default_factory=list, description="added to the default toleration of the nvidia.com/gpu taint")
    image: str | None = Field(default=None, description="worker image; default: the fleet's image")
    priority_class: str | None = Field(default=None, pattern=NAME_PATTERN,
                                       description="default: rayfleet-worker (manifests/base)")

    @field_validator("node_selector")
    @classmethod
    def _selector_labels(cls, selector: dict[str, str]) -> dict[str, str]:
        for key, value in selector.items():
            if not re.match(Toleration.LABEL_KEY, key) or len(key) > 316:
                raise ValueError(f"node_selector key {key!r} is not a valid Kubernetes label key")
            if not re.match(Toleration.LABEL_VALUE, str(value)):
                raise ValueError(f"node_selector value {value!r} of {key!r} is not a valid Kubernetes label value")
        return selector


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
    autoscale: bool | None = Field(
        default=None, description="size this pool from Ray's pending demand; empty: scaling.autoscale")
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
            if key.startswith(RESERVED_LABEL_PREFIXES):
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
    """Thresholds that turn check results into healthy / degraded / unhealthy, and the limits
    that keep remediation from draining a fleet."""

    heartbeat_interval_s: float = Field(default=1.0, gt=0, le=60, description="agent heartbeat period")
    check_interval_s: float = Field(default=5.0, gt=0, le=3600, description="passive checks refresh period")
    heartbeat_timeout_s: float = Field(default=3.0, gt=0, description="agent silence before a node is suspect")
    confirm_window_s: float = Field(
        default=45.0, ge=0, description="a suspect node is failed only if the evidence agrees this long")
    probe_timeout_s: float = Field(default=1.0, gt=0, le=30, description="deadline of the raylet health probe")
    drain_deadline_s: float = Field(default=10.0, ge=0, description="work on a failing node gets this long")
    max_gpu_temperature_c: float = Field(default=87.0, gt=0, le=120)
    min_tflops_fraction: float = Field(default=0.7, gt=0, le=1, description="burn below this x expected: failed")
    straggler_fraction: float = Field(default=0.7, gt=0, le=1, description="below this x median bandwidth: straggler")
    max_disk_used_fraction: float = Field(default=0.95, gt=0, le=1)
    max_memory_used_fraction: float = Field(default=0.97, gt=0, le=1)
    max_replacements_per_hour: int = Field(default=10, ge=0, description="per pool; stops replacement storms")
    max_quarantined: int = Field(default=2, ge=0, description="per pool; beyond it the oldest is terminated")
    quarantine_max_age_s: float = Field(default=86400.0, gt=0, description="quarantined longer: terminated")
    use_spares_first: bool = True


class ScalingPolicy(Strict):
    loop_period_s: float = Field(default=0.5, gt=0, le=60, description="controller reconcile period")
    boot_timeout_s: float = Field(default=300.0, gt=0, description="a node not joined by then is replaced")
    idle_timeout_s: float = Field(default=600.0, ge=0, description="idle nodes above the floor are removed after")
    upscaling_speed: int = Field(default=16, ge=1, description="nodes per pool launched per loop at most")
    autoscale: bool = Field(
        default=False, description="size pools from Ray's pending demand (pools[].autoscale overrides per pool); "
                                   "the manual target or spec nodes stay the floor")


class AwsFleet(Strict):
    """Fleet-wide EC2 settings. The controller runs on the head instance (`rayfleet up` there)."""

    region: str = Field(default="us-east-1", pattern=r"^[a-z]{2}(-gov)?-[a-z]+-\d$")
    endpoint_url: str | None = Field(default=None, description="EC2 endpoint override (tests use moto_server)")
    token_ssm_parameter: str | None = Field(
        default=None, pattern=r"^/[A-Za-z0-9_.\-/]{1,1010}$",
        description="SSM SecureString holding the Ray auth token; default /rayfleet/<fleet>/ray-token")
    node_instance_profile: str | None = Field(
        default=None, pattern=r"^[\w+=,.@-]{1,128}$",
        description="instance profile of worker nodes (may read the token); default rayfleet-<fleet>-node")
    node_role: str | None = Field(
        default=None, pattern=r"^[\w+=,.@-]{1,64}$",
        description="IAM role inside node_instance_profile (the controller may pass only it); default rayfleet-<fleet>-node")
    head_instance_type: str = Field(default="m6i.2xlarge", pattern=r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")
    head_ami: str | None = Field(default=None, pattern=r"^ami-[0-9a-f]{8,17}$", description="default: the first pool's AMI")
    head_instance_profile: str | None = Field(
        default=None, pattern=r"^[\w+=,.@-]{1,128}$", description="default rayfleet-<fleet>-controller")
    ray_bin_dir: str = Field(default="/opt/rayfleet/venv/bin", pattern=r"^/[A-Za-z0-9_./-]+$",
                             description="where the AMI has rayfleet's virtualenv (ray, rayfleet, python)")
    # botocore's standard mode backs off rand(0, 1) * 2**i s after a throttling error
    # (botocore/retries/standard.py): its default 3 tries give up within ~3 s of EC2's per-account
    # throttling (RequestLimitExceeded), 5 ride out up to ~15 s of it.
    api_max_attempts: int = Field(
        default=5, ge=1, le=20, description="tries per EC2 call (botocore standard retries: throttling, 5xx)")
    # A judgement, not a measurement: a zone out of spot capacity rarely recovers within minutes,
    # and retrying spot sooner mostly spends RunInstances calls on refusals.
    spot_retry_after_s: float = Field(
        default=600.0, ge=0, description="after a spot capacity error or interruption, launch on-demand this long")

    def token_parameter(self, fleet: str) -> str:
        return self.token_ssm_parameter or f"/rayfleet/{fleet}/ray-token"

    def node_profile(self, fleet: str) -> str:
        return self.node_instance_profile or f"rayfleet-{fleet}-node"

    def node_role_name(self, fleet: str) -> str:
        return self.node_role or f"rayfleet-{fleet}-node"

    def head_profile(self, fleet: str) -> str:
        return self.head_instance_profile or f"rayfleet-{fleet}-controller"


def default_image() -> str:
    """The image the Dockerfile builds for this version of rayfleet (Ray's GPU image + rayfleet)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"ghcr.io/rayfleet/rayfleet:{version('rayfleet')}"
    except PackageNotFoundError:
        return "ghcr.io/rayfleet/rayfleet:latest"


class KubernetesFleet(Strict):
    """Fleet-wide KubeRay settings (see cluster/render/k8s.py)."""

    namespace: str = Field(default="rayfleet", pattern=NAME_PATTERN)
    image: str = Field(default_factory=default_image,
                       description="image of every pod: Ray with rayfleet installed (the repository's Dockerfile "
                                   "builds it); default ghcr.io/rayfleet/rayfleet:<rayfleet's version>")
    storage_class: str | None = Field(
        default=None, description="StorageClass of the ReadWriteMany volume mounted at `storage` in every pod "
                                  "(e.g. efs-sc, filestore); default: the cluster's default class")
    storage_size: Bytes = Field(default=2**40, description="size asked for that volume")
    storage_claim: str | None = Field(
        default=None, pattern=NAME_PATTERN, description="an existing PersistentVolumeClaim to mount instead of "
                                                        "rendering <fleet>-storage")
    ray_version: str = Field(default="2.60.0", pattern=r"^\d+\.\d+\.\d+$")
    context: str | None = Field(default=None, description="kubeconfig context; default: the current one")
    kubeconfig: str | None = Field(
        default=None, description="kubeconfig file; default: in-cluster credentials in a pod, else ~/.kube/config")
    token_secret: str | None = Field(
        default=None, pattern=NAME_PATTERN, description="Secret with the Ray auth token; default <fleet>-ray-token")
    token_secret_key: str = Field(default="token", pattern=r"^[-._a-zA-Z0-9]{1,253}$")
    head_memory: Bytes = Field(default=8 * 2**30, description="memory of the head pod")

    def secret_name(self, fleet: str) -> str:
        return self.token_secret or f"{fleet}-ray-token"


class CellSpec(Strict):
    """One cell of a fleet: its own Ray cluster (head, controller, health agents) running some of
    the fleet's pools. Its fleet is named `<fleet>-<cell>`; the provider fields say where it runs."""

    name: str = Field(pattern=NAME_PATTERN, description="the cell's name; its Ray cluster is <fleet>-<name>")
    pools: list[Annotated[str, Field(pattern=NAME_PATTERN)]] = Field(
        min_length=1, description="names of the fleet's pools this cell runs; each pool is in exactly one cell")
    head_address: str | None = Field(
        default=None, description="host:port of this cell's existing head (replaces head.address in the cell)")
    region: str | None = Field(default=None, pattern=r"^[a-z]{2}(-gov)?-[a-z]+-\d$",
                               description="aws: the cell's region (replaces aws.region)")
    subnet_ids: list[Annotated[str, Field(pattern=r"^subnet-[0-9a-f]{8,17}$")]] | None = Field(
        default=None, description="aws: the cell's subnets, which fix its availability zone "
                                  "(replace the pools' provider.aws.subnet_ids)")
    context: str | None = Field(default=None, description="kubernetes: kubeconfig context of the cell's cluster "
                                                          "(replaces kubernetes.context)")
    namespace: str | None = Field(default=None, pattern=NAME_PATTERN,
                                  description="kubernetes: the cell's namespace (replaces kubernetes.namespace)")

    PROVIDER_FIELDS: ClassVar[dict[str, tuple[str, ...]]] = {
        "aws": ("region", "subnet_ids"), "kubernetes": ("context", "namespace")}

    @field_validator("head_address")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        return HeadSpec._host_port(value)


class FederationSpec(Strict):
    """How the federation of a fleet of cells treats a lost cell (cluster/decide/federation.py's
    `decide_move`, applied by the federation's mover, rayfleet/cli/mover.py). Unused by one cell."""

    head_lost_wait_s: float = Field(
        default=60.0, gt=0, le=86400,
        description="how long a cell's head may stay lost (fault tolerance off) before its jobs move to another "
                    "cell, resuming from their newest checkpoint")
    fault_tolerant_wait_s: float = Field(
        default=240.0, gt=0, le=86400,
        description="the same wait for a cell whose head has fault tolerance (it may come back with its jobs); "
                    "twice head.fault_tolerance.reconnect_timeout_s by default")


MAX_NAME_LENGTH = 32
"""NAME_PATTERN's limit: a cell's fleet name `<fleet>-<cell>` must keep within it too."""


class FleetSpec(Strict):
    name: str = Field(pattern=NAME_PATTERN, description="lower-case letters, digits and '-'")
    provider: ProviderKind = "local"
    head: HeadSpec = HeadSpec()
    storage: str | None = Field(
        default=None, description="a path every node can reach for checkpoints and job histories; default: a "
                                  "folder of the fleet")
    checkpoint_storage: S3Url | None = Field(
        default=None, description="s3://BUCKET/PREFIX for the checkpoints of every job (a job's checkpoint.storage "
                                  "wins); histories stay in storage")
    checkpoint_endpoint_url: str | None = Field(
        default=None, description="S3 endpoint for checkpoint_storage (default: AWS_ENDPOINT_URL or AWS's own)")
    pools: list[PoolSpec] = Field(min_length=1)
    health: HealthPolicy = HealthPolicy()
    scaling: ScalingPolicy = ScalingPolicy()
    aws: AwsFleet | None = None
    kubernetes: KubernetesFleet | None = None
    cells: list[CellSpec] | None = Field(
        default=None, min_length=1,
        description="the fleet as several Ray clusters (cells), each with its own head and controller; every "
                    "pool in exactly one cell; empty: one cell (or max_nodes_per_cell's split)")
    max_nodes_per_cell: int | None = Field(
        default=None, ge=1,
        description="cut the fleet into cells of at most this many nodes (max_nodes + hot_spares of their "
                    "pools), splitting large pools across cells; with cells: the cap each cell must keep")
    federation: FederationSpec | None = Field(
        default=None, description="a fleet of cells: when a lost cell's jobs move to another cell "
                                  "(empty: the defaults of its fields)")

    @property
    def federation_policy(self) -> FederationSpec:
        """The spec's `federation`, or its defaults (a spec without it renders as before)."""
        return self.federation or FederationSpec()

    @field_validator("storage")
    @classmethod
    def _a_path(cls, value: str | None) -> str | None:
        if value is not None and "://" in value:
            raise ValueError("storage holds job histories and Ray Train's run folders, which need a path every "
                             "node can reach; put an s3:// URL in checkpoint_storage for checkpoints on S3")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> FleetSpec:
        names = [pool.name for pool in self.pools]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"pools: pool names must be unique; {', '.join(duplicates)} appears more than once")
        for index, pool in enumerate(self.pools):
            for other in ("local", "aws", "kubernetes"):
                if other != self.provider and getattr(pool.provider, other) is not None:
                    raise ValueError(f"pools[{index}].provider.{other} is given but the fleet's provider is "
                                     f"{self.provider}; use provider.{self.provider} or change provider")
            if self.provider == "aws" and pool.provider.aws is None:
                raise ValueError(f"pools[{index}].provider.aws is required when provider is aws "
                                 "(instance_type and ami at least)")
            aws = pool.provider.aws
            known = aws.KNOWN_GPUS.get(aws.instance_type) if aws else None
            if aws and known and (pool.accelerator, pool.gpus_per_node) != known:
                raise ValueError(f"pools[{index}].provider.aws.instance_type {aws.instance_type} has "
                                 f"{known[1]} {known[0]} GPUs; set accelerator: {known[0]} and "
                                 f"gpus_per_node: {known[1]}, or choose another instance type")
        for block in ("aws", "kubernetes"):
            if getattr(self, block) is not None and self.provider != block:
                raise ValueError(f"{block}: is given but the fleet's provider is {self.provider}; "
                                 f"set provider: {block} or remove the {block} block")
        return self

    @model_validator(mode="after")
    def _fault_tolerance_where(self) -> FleetSpec:
        ft = self.head.fault_tolerance
        if ft.enabled and not self.capabilities.starts_redis and not ft.redis_address:
            raise ValueError(f"head.fault_tolerance.redis_address is required on {self.provider}: rayfleet starts "
                             "a Redis only for local fleets; give the address of an HA Redis (e.g. ElastiCache)")
        return self

    @model_validator(mode="after")
    def _cells_consistent(self) -> FleetSpec:
        if self.cells is not None:
            self._check_explicit_cells(self.cells)
            names = [cell.name for cell in self.cells]
        elif self.max_nodes_per_cell is not None:
            split = pack([(p.name, p.max_nodes, p.hot_spares) for p in self.pools], self.max_nodes_per_cell)
            names = [auto_cell_name(index) for index in range(len(split))]
            if len(names) > 1 and len(f"{self.name}-{names[-1]}") > MAX_NAME_LENGTH:
                raise ValueError(f"name: max_nodes_per_cell makes {len(names)} cells named {self.name}-c1.."
                                 f"{self.name}-{names[-1]}, longer than {MAX_NAME_LENGTH} characters; "
                                 f"shorten the fleet's name to {MAX_NAME_LENGTH - len(names[-1]) - 1} characters")
        else:
            return self
        if len(names) > 1:
            self._check_heads_per_cell(len(names))
        return self

    def _check_explicit_cells(self, cells: list[CellSpec]) -> None:
        owner: dict[str, str] = {}
        for index, cell in enumerate(cells):
            if cell.name in [other.name for other in cells[:index]]:
                raise ValueError(f"cells[{index}].name: names two cells; give each cell its own name")
            if len(f"{self.name}-{cell.name}") > MAX_NAME_LENGTH:
                raise ValueError(f"cells[{index}].name: the cell's fleet name {self.name}-{cell.name} is longer than "
                                 f"{MAX_NAME_LENGTH} characters; shorten the cell's or the fleet's name")
            for field, value in ((f, getattr(cell, f)) for fields in CellSpec.PROVIDER_FIELDS.values() for f in fields):
                if value is not None and field not in CellSpec.PROVIDER_FIELDS.get(self.provider, ()):
                    wanted = next(kind for kind, names in CellSpec.PROVIDER_FIELDS.items() if field in names)
                    raise ValueError(f"cells[{index}].{field}: is for provider {wanted}, and the fleet's provider is "
                                     f"{self.provider}; remove it")
            for position, pool in enumerate(cell.pools):
                where = f"cells[{index}].pools[{position}]"
                if pool not in self.pool_names:
                    raise ValueError(f"{where}: is not a pool of this fleet; use one of "
                                     f"{', '.join(self.pool_names)}")
                if pool in owner:
                    raise ValueError(f"{where}: the pool is already in cell {owner[pool]!r}; a pool belongs to "
                                     "one cell (max_nodes_per_cell splits a large pool across cells)")
                owner[pool] = cell.name
            if self.max_nodes_per_cell is not None:
                self._check_cell_fits(index, cell, self.max_nodes_per_cell)
        missing = [pool for pool in self.pool_names if pool not in owner]
        if missing:
            raise ValueError(f"cells: pool {missing[0]!r} is in no cell; add it to one cell's pools")

    def _check_cell_fits(self, index: int, cell: CellSpec, cap: int) -> None:
        pools = [self.pool(name) for name in cell.pools]
        floor = sum(pool.min_nodes + pool.hot_spares for pool in pools)
        ceiling = sum(pool.max_nodes + pool.hot_spares for pool in pools)
        if floor > cap:
            raise ValueError(f"cells[{index}].pools: the min_nodes and hot_spares of {', '.join(cell.pools)} "
                             f"({floor} nodes) cannot fit in max_nodes_per_cell ({cap}); lower min_nodes, move a "
                             "pool to another cell or raise max_nodes_per_cell")
        if ceiling > cap:
            raise ValueError(f"cells[{index}].pools: the max_nodes and hot_spares of {', '.join(cell.pools)} "
                             f"({ceiling} nodes) exceed max_nodes_per_cell ({cap}); lower max_nodes, move a pool "
                             "to another cell, or drop cells and let max_nodes_per_cell split the pools")

    def _check_heads_per_cell(self, count: int) -> None:
        """Each cell is its own Ray cluster: one fixed head port or address cannot serve them all."""
        if self.head.address and not (self.cells and all(cell.head_address for cell in self.cells)):
            raise ValueError(f"head.address: names one head, and the fleet has {count} cells, each with its own "
                             "head; give every cell its head_address under cells")
        if self.capabilities.nodes_on_this_machine:
            for field in ("port", "dashboard_port"):
                if getattr(self.head, field) is not None:
                    raise ValueError(f"head.{field}: the fleet's {count} cells are Ray clusters on this machine and "
                                     "cannot share one port; leave it empty (each cell's head takes a free port)")

    @property
    def capabilities(self) -> Capabilities:
        """What the fleet's provider supports (cluster/spec/capabilities.py)."""
        return capabilities(self.provider)

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
