"""What each kind of provider supports. Callers ask a fleet's capabilities (`FleetSpec.capabilities`),
never its provider's name, so a new provider is one entry here and one module in providers/.

Pure data: nothing here imports a provider or a cloud SDK.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ProviderKind = Literal["local", "aws", "kubernetes"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Capabilities:
    nodes_on_this_machine: bool
    """Nodes are processes of the machine that runs `rayfleet`: the head binds 127.0.0.1, a job's
    driver runs in this interpreter, adding a node needs this machine's CPU and memory, and
    `rayfleet chaos kill-node` can kill a node's processes."""
    declared_gpus: bool
    """A pool's GPUs are what the spec declares (Ray resources), real or not: a job on them
    trains on CUDA only when this machine has a GPU."""
    starts_redis: bool
    """rayfleet starts the Redis that head fault tolerance keeps the GCS in; elsewhere the spec
    gives an HA Redis's address."""
    platform_head: bool
    """The Ray head is the platform's (KubeRay's): `rayfleet up` joins it at `head.address`."""
    ray_job_resource: bool
    """A job can be handed to the platform as a RayJob (`rayfleet render job`)."""
    sdk: tuple[str, str] | None = None
    """(module, extra): the client library the provider calls, installed by `rayfleet[extra]`."""


CAPABILITIES: dict[str, Capabilities] = {
    "local": Capabilities(nodes_on_this_machine=True, declared_gpus=True, starts_redis=True,
                          platform_head=False, ray_job_resource=False),
    "aws": Capabilities(nodes_on_this_machine=False, declared_gpus=False, starts_redis=False,
                        platform_head=False, ray_job_resource=False, sdk=("boto3", "aws")),
    "kubernetes": Capabilities(nodes_on_this_machine=False, declared_gpus=False, starts_redis=False,
                               platform_head=True, ray_job_resource=True, sdk=("kubernetes", "kubernetes")),
}


def capabilities(provider: str) -> Capabilities:
    return CAPABILITIES[provider]
