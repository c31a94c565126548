"""Shell completion of fleet, pool and job names (`rayfleet --install-completion` sets it up).

Completion runs on every TAB, so it reads only local files (the fleet folders, the copied fleet
spec, the job history in the fleet's storage) and never talks to Ray; any failure completes
nothing rather than printing an error into the user's shell.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from rayfleet.cluster.head.fleetdir import FleetDir, current_fleet_name, rayfleet_home


def complete_fleet(incomplete: str) -> list[str]:
    try:
        root = rayfleet_home() / "fleets"
        return sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith(incomplete))
    except OSError:
        return []


def complete_pool(ctx: Any, incomplete: str) -> list[str]:
    try:
        fleet = _fleet(ctx)
        spec = yaml.safe_load(fleet.spec_file.read_text()) if fleet else None
        names = [pool["name"] for pool in (spec or {}).get("pools", []) if isinstance(pool, dict)]
        return [name for name in names if str(name).startswith(incomplete)]
    except Exception:  # a half-written spec completes nothing
        return []


def complete_job(ctx: Any, incomplete: str) -> list[str]:
    try:
        fleet = _fleet(ctx)
        if fleet is None:
            return []
        root = _storage(fleet) / "jobs"
        return sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith(incomplete))
    except OSError:
        return []


def _fleet(ctx: Any) -> FleetDir | None:
    name = (getattr(ctx, "params", None) or {}).get("fleet_name") or current_fleet_name()
    fleet = FleetDir(name) if name else None
    return fleet if fleet is not None and fleet.exists() else None


def _storage(fleet: FleetDir) -> Path:
    """The job storage `rayfleet up` recorded, where it is a local folder; else the default."""
    try:
        storage = json.loads((fleet.path / "runtime.json").read_text()).get("storage", "")
    except (OSError, ValueError):
        storage = ""
    return Path(storage) if storage and "://" not in storage else fleet.storage_dir
