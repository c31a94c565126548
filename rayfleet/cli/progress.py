"""Waiting for pools with a live progress display (used by `up` and `scale --wait`)."""
from __future__ import annotations

import time
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from rayfleet.cli.output import console
from rayfleet.errors import Failed
from rayfleet.cluster.loop.store import FleetStore


def pools_ready(status: dict[str, Any]) -> bool:
    return all(pool["ready"] == pool["desired"] and pool["spares_ready"] >= pool["spares"]
               for pool in status["pools"])


def wait_for_pools(store: FleetStore, fleet: str, timeout_s: float) -> dict[str, Any]:
    """Block until every pool has its desired ready nodes and spares; Failed after `timeout_s`.

    Only a status the controller published after this call started counts, so a re-applied spec
    is never reported ready on the strength of the previous one.
    """
    started = time.time()
    deadline = time.monotonic() + timeout_s
    tasks: dict[str, int] = {}
    status: dict[str, Any] | None = None
    with Progress(TextColumn("{task.description:>16}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=console,
                  transient=False) as progress:
        while time.monotonic() < deadline:
            status = store.status()
            fresh = status is not None and status["observed_at"] > started + 0.5
            if fresh:
                for pool in status["pools"]:
                    want = pool["desired"] + pool["spares"]
                    have = pool["ready"] + min(pool["spares_ready"], pool["spares"])
                    detail = f"{pool['starting']} starting" if pool["starting"] else ""
                    if pool["unhealthy"]:
                        detail += f" {pool['unhealthy']} unhealthy"
                    if pool["name"] not in tasks:
                        tasks[pool["name"]] = progress.add_task(pool["name"], total=want, detail=detail)
                    progress.update(tasks[pool["name"]], total=want, completed=have, detail=detail)
                if pools_ready(status):
                    return status
            time.sleep(0.5)
    missing = ", ".join(f"{p['name']} {p['ready']}/{p['desired']} ready" for p in (status or {}).get("pools", []))
    events = store.events()[-5:]
    recent = "\n".join(f"  {e.kind}: {e.message}" for e in events)
    raise Failed(f"fleet {fleet} was not ready within {timeout_s:.0f}s ({missing or 'no status yet'}); "
                 f"recent events:\n{recent}\n`rayfleet status` and `rayfleet events` show more")
