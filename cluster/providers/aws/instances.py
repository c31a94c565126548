"""EC2's answers as rayfleet values: instance descriptions -> Instance, errors -> their meaning.

Pure functions over the dicts boto3 returns, so they are tested without an endpoint.
"""
from __future__ import annotations

import hashlib
from typing import Any, Mapping

from rayfleet.cluster.decide.view import Instance, InstanceStatus
from rayfleet.names import INSTANCE_LABEL, POOL_LABEL, ROLE_LABEL

CAPACITY_ERRORS = frozenset({
    # EC2 API error codes that mean "no capacity of this kind now" (the EC2 API reference, "Error
    # codes"): a spot launch falls back to on-demand on these; an on-demand one backs off.
    "InsufficientInstanceCapacity", "InsufficientHostCapacity", "InsufficientCapacity",
    "SpotMaxPriceTooLow", "MaxSpotInstanceCountExceeded", "InsufficientFreeAddressesInSubnet",
})

SPOT_INTERRUPTION = "Server.SpotInstanceTermination"
"""StateReason code of an instance EC2 reclaimed (spot interruption)."""

_STATUS = {
    "pending": InstanceStatus.PENDING,
    "running": InstanceStatus.RUNNING,
    "shutting-down": InstanceStatus.TERMINATED,
    "terminated": InstanceStatus.TERMINATED,
    "stopping": InstanceStatus.TERMINATED,   # rayfleet never stops instances: a stopped one is lost
    "stopped": InstanceStatus.TERMINATED,
}

MAX_CLIENT_TOKEN = 64
"""EC2 accepts client tokens of up to 64 ASCII characters."""


def client_token(name: str, on_demand_fallback: bool = False) -> str:
    """The RunInstances ClientToken of an instance: its name, so a repeated launch is the same launch.

    The on-demand fallback after a failed spot attempt gets its own token, as EC2 refuses a token
    reused with different parameters (IdempotentParameterMismatch). Names too long for a token
    (fleet and pool names may each be 32 characters) are hashed.
    """
    token = f"{name}.od" if on_demand_fallback else name
    if len(token) <= MAX_CLIENT_TOKEN:
        return token
    digest = hashlib.sha256(name.encode()).hexdigest()[:48]
    return f"rf-{digest}" + (".od" if on_demand_fallback else "")


def tag_map(description: Mapping[str, Any]) -> dict[str, str]:
    return {tag["Key"]: tag["Value"] for tag in description.get("Tags", [])}


def is_worker(description: Mapping[str, Any]) -> bool:
    return tag_map(description).get(ROLE_LABEL) == "worker" and INSTANCE_LABEL in tag_map(description)


def was_interrupted(description: Mapping[str, Any]) -> bool:
    return (description.get("StateReason") or {}).get("Code") == SPOT_INTERRUPTION


def to_instance(description: Mapping[str, Any]) -> Instance:
    """One EC2 instance description (DescribeInstances / RunInstances) as an Instance."""
    labels = tag_map(description)
    state = description.get("State", {}).get("Name", "pending")
    status = _STATUS.get(state, InstanceStatus.PENDING)
    detail = ""
    if status is InstanceStatus.TERMINATED:
        reason = description.get("StateReason") or {}
        if was_interrupted(description):
            detail = "spot interruption"
        else:
            detail = reason.get("Message") or reason.get("Code") or f"instance {state}"
    launched = description.get("LaunchTime")
    return Instance(
        id=labels[INSTANCE_LABEL],
        pool=labels.get(POOL_LABEL, ""),
        status=status,
        launched_at=launched.timestamp() if hasattr(launched, "timestamp") else 0.0,
        detail=detail,
        provider_id=description.get("InstanceId"),
        spot=description.get("InstanceLifecycle") == "spot",
    )


def newest_per_name(descriptions: list[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """One description per instance name: a live one wins over a terminated one of the same name."""
    chosen: dict[str, Mapping[str, Any]] = {}
    for description in descriptions:
        name = tag_map(description)[INSTANCE_LABEL]
        known = chosen.get(name)
        alive = _STATUS.get(description.get("State", {}).get("Name", ""), None) is not InstanceStatus.TERMINATED
        if known is None or alive:
            chosen[name] = description
    return chosen


def error_code(error: BaseException) -> str:
    """The EC2 error code of a botocore ClientError ('' for anything else)."""
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))
