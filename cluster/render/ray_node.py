"""The Ray identity of a pool's node: its labels and custom resources, on every platform.

The local provider, the EC2 user-data and the KubeRay worker groups all start `ray start` with
these, so a node is joined to its instance record by label whatever the cloud (see cluster/decide/view.py).
"""
from __future__ import annotations

import json

from rayfleet.cluster.spec.fleet import PoolSpec
from rayfleet.names import ACCELERATOR_LABEL, FLEET_LABEL, INSTANCE_LABEL, POOL_LABEL


def pool_labels(fleet: str, pool: PoolSpec) -> dict[str, str]:
    """Labels every node of the pool carries, before its own instance label."""
    labels = {FLEET_LABEL: fleet, POOL_LABEL: pool.name, **pool.labels}
    if pool.accelerator:
        labels[ACCELERATOR_LABEL] = pool.accelerator
    return labels


def node_labels(fleet: str, pool: PoolSpec, instance: str) -> dict[str, str]:
    """All labels of one node; the instance label comes last (the local provider finds it there)."""
    return {**pool_labels(fleet, pool), INSTANCE_LABEL: instance}


def labels_argument(labels: dict[str, str]) -> str:
    """The value of `ray start --labels`: key=value pairs joined by commas."""
    return ",".join(f"{key}={value}" for key, value in labels.items())


def pool_resources(pool: PoolSpec) -> dict[str, float]:
    """Custom Ray resources: `accelerator_type:<X>` as Ray's own GPU detection names it."""
    return {f"accelerator_type:{pool.accelerator}": 1.0} if pool.accelerator else {}


def resources_argument(pool: PoolSpec) -> str:
    return json.dumps(pool_resources(pool), sort_keys=True)


def number(value: float) -> str:
    """2.0 -> '2', 0.5 -> '0.5' (Ray and Kubernetes both read either)."""
    return str(int(value)) if float(value).is_integer() else str(value)
