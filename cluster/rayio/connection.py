"""How a command reaches a running fleet: its folder, its head, its token, its store."""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from rayfleet.cluster.rayio import gcs
from rayfleet.errors import BadInput, FleetNotRunning
from rayfleet.names import NAMESPACE
from rayfleet.cluster.head.federation_record import read_federation
from rayfleet.cluster.head.fleetdir import FleetDir, resolve_fleet
from rayfleet.cluster.loop.store import FleetStore
from rayfleet.cluster.head.supervisor import head_in_progress


def use_token(token_path: Path) -> None:
    """Token authentication for this process and what it starts (Ray reads these variables).

    Ray caches the mode and the token once loaded; a process that already imported Ray (or talks
    to two fleets) refreshes both, as Ray's own `_enable_token_auth` does.
    """
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(token_path)
    os.environ.pop("RAY_AUTH_TOKEN", None)
    if "ray._raylet" in sys.modules:
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()


@dataclass
class Connection:
    fleet: FleetDir
    gcs_address: str
    dashboard_url: str
    client: Any
    store: FleetStore


HEAD_RESTART_WAIT_S = 120.0  # how long a command waits for a head its supervisor is bringing back


def await_head(fleet: FleetDir, answers: Callable[[], bool], what: str,
               coming: Callable[[], bool] | None = None) -> bool:
    """Whether ``answers()`` holds; while it does not and the head is on its way (``coming()``, by
    default: the fleet's supervisor is at work on the head, restarting it after a crash under fault
    tolerance, say), asked again each second for up to HEAD_RESTART_WAIT_S. A command given during a
    head failover waits for the head instead of failing; with nothing on its way it fails at once."""
    coming = coming or (lambda: head_in_progress(fleet.path))
    if answers():
        return True
    if not coming():
        return False
    print(f"fleet {fleet.name}: {what} does not answer yet, the head is starting; waiting up to "
          f"{HEAD_RESTART_WAIT_S:.0f}s", file=sys.stderr)
    deadline = time.monotonic() + HEAD_RESTART_WAIT_S
    while time.monotonic() < deadline and coming():
        time.sleep(1.0)
        if answers():
            return True
    return answers()


def connect(fleet_name: str | None = None) -> Connection:
    """Reach the named (or current) fleet; FleetNotRunning if its head is down."""
    fleet = resolve_fleet(fleet_name)
    head = fleet.read_head()
    record = read_federation(fleet) if head is None else None
    if record is not None:
        cells = ", ".join(cell.fleet for cell in record.cells)
        raise BadInput(f"fleet {fleet.name} is {len(record.cells)} cells, each its own Ray cluster ({cells}); "
                       f"this command addresses one: pass --fleet with a cell's fleet")
    if head is None:
        raise FleetNotRunning(f"fleet {fleet.name} is down; start it with `rayfleet up -f {fleet.spec_file}`")
    if not await_head(fleet, lambda: gcs.reachable((fleet.read_head() or head)["gcs_address"]), "its Ray head"):
        raise FleetNotRunning(f"fleet {fleet.name}: its Ray head at {head['gcs_address']} does not answer (it "
                              f"crashed or was stopped); `rayfleet down --fleet {fleet.name}` cleans up what is "
                              f"left, then `rayfleet up -f {fleet.spec_file}` starts it again")
    head = fleet.read_head() or head
    use_token(fleet.token_file)
    client = gcs.client(head["gcs_address"])
    return Connection(fleet=fleet, gcs_address=head["gcs_address"], dashboard_url=head["dashboard_url"],
                      client=client, store=FleetStore(client))


@contextlib.contextmanager
def ray_driver(gcs_address: str) -> Iterator[None]:
    """A short-lived Ray driver for commands that must call actors (up, down, health, chaos).

    Every Ray driver prints the cluster's error messages (a node elsewhere marked dead, say) from a
    background thread to stdout, whatever `log_to_driver` says; while the driver lives, stdout is
    stderr, so a command's stdout holds only its result (`-o json` stays parseable)."""
    import ray

    with contextlib.redirect_stdout(sys.stderr):
        ray.init(address=gcs_address, namespace=NAMESPACE, logging_level=logging.ERROR,
                 log_to_driver=False, configure_logging=False)
        try:
            yield
        finally:
            ray.shutdown()
