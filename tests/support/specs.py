"""Fleet and job specs as tests write them: the H100 pool most tests run, a validated fleet spec
from its parts, and a job document that trains the tiny preset on that pool."""
from __future__ import annotations

from typing import Any

from rayfleet.cluster.spec.fleet import FleetSpec


def h100_pool(**fields: Any) -> dict[str, Any]:
    """Pool `h100` of 8-GPU H100 nodes; `fields` give its sizes and anything else it sets."""
    return {"name": "h100", "accelerator": "H100", "gpus_per_node": 8, **fields}


def fleet_spec(*pools: dict[str, Any], name: str = "t", **sections: Any) -> FleetSpec:
    """A validated FleetSpec of `pools`, with the spec's other top-level `sections` (provider,
    scaling, health, head, ...)."""
    return FleetSpec.model_validate({"name": name, "pools": list(pools), **sections})


def job_spec(name: str, **fields: Any) -> dict[str, Any]:
    """A job document, as `rayfleet submit -f` reads it, training the tiny preset on pool h100;
    `fields` add to it or replace its parts."""
    return {"name": name, "pool": "h100", "model": {"preset": "tiny"}, **fields}
