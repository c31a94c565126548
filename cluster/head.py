"""The local fleet's head node: a `ray start --head --block` process this machine owns.

`head.json` in the fleet folder records its pid, create time, addresses and ports, so a second
`rayfleet up` finds it and `rayfleet down` stops exactly it. Everything listens on 127.0.0.1 unless
the spec's `head.dashboard_host` says otherwise; Ray's token authentication stays on.
"""
from __future__ import annotations

import shutil
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from cluster import gcs
from cluster.errors import Failed, FleetNotRunning
from cluster.fleetdir import FleetDir
from cluster.processes import Owned, free_port, spawn_detached, stop_tree, write_json_atomic
from cluster.providers.local import node_environment, ray_executable
from cluster.spec import FleetSpec
from cluster.view import FLEET_LABEL

HEAD_START_TIMEOUT_S = 120.0
"""A head on a loaded 2-core machine took 7-14 s to start here; leave room for slower CI."""


@dataclass(frozen=True)
class HeadInfo:
    gcs_address: str
    dashboard_url: str
    owned: Owned | None   # None: an external head named by the spec (not ours to stop)

    def to_json(self) -> dict[str, Any]:
        return {"gcs_address": self.gcs_address, "dashboard_url": self.dashboard_url,
                **(self.owned.to_json() if self.owned else {})}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HeadInfo:
        owned = Owned.from_json(data) if "pid" in data else None
        return cls(gcs_address=data["gcs_address"], dashboard_url=data["dashboard_url"], owned=owned)


def running_head(fleet: FleetDir) -> HeadInfo | None:
    """The head recorded for this fleet, if its process is alive and its GCS answers."""
    data = fleet.read_head()
    if data is None:
        return None
    info = HeadInfo.from_json(data)
    if info.owned is not None and not info.owned.alive():
        return None
    return info if gcs.reachable(info.gcs_address) else None


def head_command(spec: FleetSpec, fleet: FleetDir, port: int, dashboard_port: int) -> list[str]:
    head = spec.head
    # A local fleet stays on this machine; a cloud head must be reachable by its workers, so Ray
    # picks the machine's own address there.
    where = ["--node-ip-address=127.0.0.1"] if spec.provider == "local" else []
    return [
        ray_executable(), "start", "--head", "--block",
        f"--port={port}",
        *where,
        f"--num-cpus={int(head.cpus) if float(head.cpus).is_integer() else head.cpus}",
        "--num-gpus=0",
        "--include-dashboard=true",
        f"--dashboard-host={head.dashboard_host}",
        f"--dashboard-port={dashboard_port}",
        f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--object-store-memory={200 * 2**20}",
        f"--labels={FLEET_LABEL}={spec.name},rayfleet.io/role=head",
        f"--temp-dir={fleet.temp_root / 'head'}",
        "--disable-usage-stats",
        "--log-style=record",
    ]


def start_head(spec: FleetSpec, fleet: FleetDir, on_wait: Callable[[str], None] = lambda _: None) -> HeadInfo:
    """Start the fleet's head and wait until its GCS and dashboard answer."""
    port = spec.head.port or free_port()
    dashboard_port = spec.head.dashboard_port or free_port()
    token = fleet.ensure_token()
    log_path = fleet.logs_dir / "head.log"
    try:
        owned = spawn_detached(head_command(spec, fleet, port, dashboard_port), log_path,
                               env=node_environment(token))
    except OSError as error:
        raise Failed(f"could not start the Ray head ({error}); `{ray_executable()} --version` checks that Ray "
                     f"is installed beside rayfleet, and {log_path} holds what it printed") from None
    host = "127.0.0.1" if spec.head.dashboard_host in ("0.0.0.0", "::") else spec.head.dashboard_host
    info = HeadInfo(gcs_address=f"127.0.0.1:{port}", dashboard_url=f"http://{host}:{dashboard_port}",
                    owned=owned)
    write_json_atomic(fleet.head_file, {**info.to_json(), "started_at": time.time()})
    on_wait("starting the Ray head")
    deadline = time.monotonic() + HEAD_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if not owned.alive():
            raise Failed(f"the Ray head exited while starting; see {log_path}:\n{_tail(log_path)}")
        if gcs.reachable(info.gcs_address, timeout_s=0.5) and _dashboard_answers(info.dashboard_url):
            return info
        time.sleep(0.25)
    stop_tree(owned)
    raise Failed(f"the Ray head did not answer within {HEAD_START_TIMEOUT_S:.0f}s; see {log_path}")


def use_external_head(spec: FleetSpec, fleet: FleetDir) -> HeadInfo:
    """A head rayfleet did not start (KubeRay's, or one named by `head.address`): never ours to stop."""
    assert spec.head.address is not None
    fleet.ensure_token()
    if not gcs.reachable(spec.head.address, timeout_s=5.0):
        raise FleetNotRunning(f"head.address: nothing answers at {spec.head.address}; start that head first "
                              "or remove head.address to let rayfleet start one")
    host = spec.head.address.rpartition(":")[0]
    info = HeadInfo(gcs_address=spec.head.address,
                    dashboard_url=f"http://{host}:{spec.head.dashboard_port or 8265}", owned=None)
    write_json_atomic(fleet.head_file, {**info.to_json(), "started_at": time.time()})
    return info


def stop_head(fleet: FleetDir) -> None:
    """Stop the head we started (not an external one) and remove the fleet's Ray temp folders."""
    data = fleet.read_head()
    if data is not None:
        info = HeadInfo.from_json(data)
        if info.owned is not None:
            stop_tree(info.owned, grace_s=10.0)
            shutil.rmtree(fleet.temp_root, ignore_errors=True)  # sessions and logs of head and nodes
    fleet.head_file.unlink(missing_ok=True)


def _dashboard_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/api/version", timeout=1.0):
            return True
    except urllib.error.HTTPError:
        return True  # it answered (401 without a token is an answer)
    except (urllib.error.URLError, OSError):
        return False


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""
