"""Instance names: FLEET-POOL-NNNN, numbered per pool so a name never repeats in a fleet's life.

The name is the launch's client token and the node's `rayfleet.io/instance` label, so a
restarted controller can tell its own instances from others and resume their numbering.
"""
from __future__ import annotations

import re
from typing import Container

_NUMBER = re.compile(r"-(\d+)$")


def instance_name(fleet: str, pool: str, number: int) -> str:
    return f"{fleet}-{pool}-{number:04d}"


def number_of(name: str) -> int | None:
    """The sequence number a name ends with, if it ends with one."""
    match = _NUMBER.search(name)
    return int(match.group(1)) if match else None


def named_by_fleet(name: str, fleet: str, pools: Container[str]) -> bool:
    """Whether `instance_name` made this name for `fleet`, in one of `pools`."""
    prefix = f"{fleet}-"
    if not name.startswith(prefix):
        return False
    pool, _, number = name[len(prefix):].rpartition("-")
    return pool in pools and number.isdigit() and len(number) >= 4
