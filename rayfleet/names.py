"""Every name rayfleet shares with Ray, a cloud or another of its processes, defined once.

Ray namespace and actor names, the node labels (Ray node labels, EC2 tags and Kubernetes labels
use the same keys), and the keys of the GCS KV store. A name that two modules must agree on lives
here; a module's private names stay in the module.
"""
from __future__ import annotations

# --- Ray -----------------------------------------------------------------------------------------
NAMESPACE = "rayfleet"
"""The Ray namespace of rayfleet's actors and of its GCS KV keys."""
CONTROLLER_NAME = "rayfleet-controller"
AGENT_PREFIX = "rayfleet-health-"
"""A health agent actor is named AGENT_PREFIX + its node's instance name."""

# --- labels and tags -----------------------------------------------------------------------------
FLEET_LABEL = "rayfleet.io/fleet"
POOL_LABEL = "rayfleet.io/pool"
INSTANCE_LABEL = "rayfleet.io/instance"
SPARE_LABEL = "rayfleet.io/spare"
ACCELERATOR_LABEL = "rayfleet.io/accelerator"
ROLE_LABEL = "rayfleet.io/role"
"""head / worker: a Kubernetes label and an EC2 tag."""
JOB_LABEL = "rayfleet.io/job"
"""A Ray job's metadata key naming its rayfleet job."""
REQUESTS_ANNOTATION = "rayfleet.io/requests"
"""The RayCluster annotation that keeps the Kubernetes provider's launch ledger."""
RESERVED_LABEL_PREFIXES = ("rayfleet.io/", "ray.io/")
"""Label keys a spec may not set on a pool: rayfleet and Ray set them."""

# --- GCS KV keys (namespace NAMESPACE) -----------------------------------------------------------
# The fleet's own record (cluster/loop/store.py documents who writes each).
SPEC_KEY = "spec"
RUNTIME_KEY = "runtime"
TARGETS_KEY = "targets"
QUARANTINE_KEY = "quarantine"
STATE_KEY = "state"
"""The whole FleetState as one JSON document: the layout before per-node records, read once on upgrade."""
STATE_FLEET_KEY = "state/fleet"
"""The controller's fleet-level state: sequences, pool failures, replacements, demand times."""
STATE_NODE_PREFIX = "state/node/"
"""One key per node record of the controller's state: STATE_NODE_PREFIX + instance name."""
USAGE_KEY = "usage"
STATUS_KEY = "status"
HEALTH_KEY = "health"
EVENTS_KEY = "events"
NOTICES_KEY = "notices"
"""node id -> deadline of the preemption or maintenance notice it is under (the controller writes)."""


def node_state_key(instance: str) -> str:
    return STATE_NODE_PREFIX + instance


def instance_of_state_key(key: str) -> str:
    return key[len(STATE_NODE_PREFIX):]


# Per job, under JOB_KEYS_PREFIX + name: what its ranks and driver publish, the controller and the CLI read.
JOB_KEYS_PREFIX = "job/"


def job_of_key(key: str) -> str:
    """The job a per-job key belongs to."""
    return key.split("/")[1]


def is_beat_key(key: str) -> bool:
    return key.startswith(JOB_KEYS_PREFIX) and "/beat/" in key


def is_notice_ack_key(key: str) -> bool:
    return key.startswith(JOB_KEYS_PREFIX) and key.endswith("/notice-ack")


def progress_key(job: str) -> str:
    return f"job/{job}/progress"


def beat_key(job: str, rank: int) -> str:
    return f"job/{job}/beat/{rank}"


def notice_ack_key(job: str) -> str:
    return f"job/{job}/notice-ack"


def warm_env_key(job: str) -> str:
    return f"job/{job}/warm-env"


def warm_prefix(job: str) -> str:
    """Every standby key of the job starts so (the node id is the key's second-to-last part)."""
    return f"job/{job}/warm/"


def standby_key(job: str, node_id: str, pid: int) -> str:
    return f"{warm_prefix(job)}{node_id}/{pid}"


# Environment variables the health agent reads (cluster/health/telemetry.py).
SIMULATE_GPUS_ENV = "RAYFLEET_SIMULATE_GPUS"
"""1: the agent simulates GPU telemetry even where NVIDIA devices exist (a test bench on a GPU machine)."""
DEVICE_DIR_ENV = "RAYFLEET_DEVICE_DIR"
"""Where the agent looks for NVIDIA device files (nvidia0, nvidia1, ...); default /dev."""

CUDA_GRAPHS_ENV = "RAYFLEET_CUDA_GRAPHS"
"""0: a compiled job on one GPU runs without CUDA graphs (jobs/worker/compilation.py)."""
