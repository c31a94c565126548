"""The local fleet's head node: a `ray start --head --block` process this machine owns.

`head.json` in the fleet folder records its pid, create time, addresses and ports, so a second
`rayfleet up` finds it and `rayfleet down` stops exactly it. Everything listens on 127.0.0.1 unless
the spec's `head.dashboard_host` says otherwise; Ray's token authentication stays on.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rayfleet.cluster.rayio import gcs
from rayfleet.errors import BadInput, Failed, FleetNotRunning
from rayfleet.cluster.head.fleetdir import FleetDir
from rayfleet.cluster.head.processes import Owned, free_port, spawn_detached, stop_tree, write_json_atomic
from rayfleet.cluster.head.supervisor import CONFIG as SUPERVISOR_CONFIG
from rayfleet.cluster.head.supervisor import MODULE as SUPERVISOR_MODULE
from rayfleet.cluster.head.supervisor import STATE as SUPERVISOR_STATE
from rayfleet.cluster.head.supervisor import read_state as read_supervisor_state
from rayfleet.cluster.head.supervisor import supervisor_process
from rayfleet.cluster.providers.local import ray_executable, rayfleet_environment
from rayfleet.cluster.spec.fleet import FleetSpec
from rayfleet.names import FLEET_LABEL, ROLE_LABEL

SUPERVISOR_GONE = ("the head's supervisor is not running (an interrupted `rayfleet down`?), so nothing restarts "
                   "the head or its Redis if they exit: `rayfleet down`, then `rayfleet up`")
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
    where = ["--node-ip-address=127.0.0.1"] if spec.capabilities.nodes_on_this_machine else []
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
        f"--labels={FLEET_LABEL}={spec.name},{ROLE_LABEL}=head",
        f"--temp-dir={fleet.temp_root / 'head'}",
        "--disable-usage-stats",
        "--log-style=record",
    ]


def start_head(spec: FleetSpec, fleet: FleetDir) -> HeadInfo:
    """Start the fleet's supervisor, which starts the head (and Redis), then wait until the head's
    GCS and dashboard answer."""
    fleet.ensure_temp_root()  # first: a folder squatted by another user is bad input, and nothing starts
    stop_head(fleet)  # whatever an earlier `up` left behind (a caller adopts a supervisor still at work)
    token = fleet.ensure_token()
    port = spec.head.port or free_port()
    dashboard_port = spec.head.dashboard_port or free_port()
    host = "127.0.0.1" if spec.head.dashboard_host in ("0.0.0.0", "::") else spec.head.dashboard_host
    gcs_address, dashboard_url = f"127.0.0.1:{port}", f"http://{host}:{dashboard_port}"
    env = rayfleet_environment(token)  # the supervisor adds its own inherited environment
    ft = spec.head.fault_tolerance
    config: dict[str, Any] = {
        "fleet": spec.name, "fault_tolerant": ft.enabled, "gcs_address": gcs_address,
        "dashboard_url": dashboard_url, "head_temp_dir": str(fleet.temp_root / "head"),
        "head_command": head_command(spec, fleet, port, dashboard_port), "head_env_set": env,
    }
    if ft.enabled:
        config.update(fault_tolerance_config(spec, fleet))
        env["RAY_REDIS_ADDRESS"] = config["redis_address"]
        # A fresh `up` gets its own namespace: a Redis that outlived `down` never revives an old cluster.
        env["RAY_external_storage_namespace"] = f"{spec.name}-{int(time.time())}"
    write_json_atomic(fleet.path / SUPERVISOR_CONFIG, config)
    supervisor_env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    spawn_detached([sys.executable, "-m", SUPERVISOR_MODULE, str(fleet.path)], fleet.logs_dir / "supervisor.out",
                   env=supervisor_env)
    return _wait_for_head(fleet, dashboard_url)


def adopt_head(fleet: FleetDir) -> HeadInfo:
    """Wait for the head of a supervisor in progress (see supervisor.head_in_progress) instead of starting a
    second one beside it."""
    return _wait_for_head(fleet, json.loads((fleet.path / SUPERVISOR_CONFIG).read_text())["dashboard_url"])


def _wait_for_head(fleet: FleetDir, dashboard_url: str) -> HeadInfo:
    """Wait until the supervisor's current head is ready; on failure stop it all and say why."""
    deadline = time.monotonic() + HEAD_START_TIMEOUT_S
    log_path = fleet.logs_dir / "head.log"
    while time.monotonic() < deadline:
        state = (read_supervisor_state(fleet.path) or {}).get("head") or {}
        if state.get("gave_up"):
            stop_head(fleet)
            raise Failed(f"the Ray head did not start: {state['gave_up']}; see {log_path}:\n{_tail(log_path)}")
        info = fleet.read_head()
        # Ready once the supervisor saw this head's node registered: `ray start` can still exit after
        # its GCS and dashboard answer (it gives the raylet a fixed 30 s), and the supervisor then
        # starts another; a caller must not connect to the one that is going away.
        if info is not None and state.get("node_id") and (state.get("owned") or {}).get("pid") == info.get("pid") \
                and _dashboard_answers(dashboard_url):
            return HeadInfo.from_json(info)
        time.sleep(0.25)
    stop_head(fleet)
    raise Failed(f"the Ray head did not answer within {HEAD_START_TIMEOUT_S:.0f}s; see {log_path} and "
                 f"{fleet.logs_dir / 'supervisor.log'}")


def fault_tolerance_config(spec: FleetSpec, fleet: FleetDir) -> dict[str, Any]:
    """Where the GCS keeps its state: an external Redis, or one rayfleet runs on 127.0.0.1."""
    ft = spec.head.fault_tolerance
    if ft.redis_address:
        return {"redis_address": ft.redis_address, "password_env": ft.password_env,
                "password_file": ft.password_file}
    redis_dir = fleet.path / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    if ft.password_env:
        source: dict[str, Any] = {"password_env": ft.password_env}
        password = os.environ.get(ft.password_env, "")
        if not password:
            raise BadInput(f"head.fault_tolerance.password_env: {ft.password_env} is not set in this shell; "
                           "export it, or drop password_env to let rayfleet make a password file")
    else:
        password_file = Path(ft.password_file) if ft.password_file else fleet.path / "redis_password"
        if not password_file.exists():
            _write_secret(password_file, secrets.token_hex(32))
        source, password = {"password_file": str(password_file)}, password_file.read_text().strip()
    port = free_port()
    conf = redis_dir / "redis.conf"
    # append-only with an fsync a second: a Redis restart loses at most a second of GCS writes
    _write_secret(conf, "\n".join([
        f"port {port}", "bind 127.0.0.1", "protected-mode yes", f"requirepass {password}",
        "appendonly yes", "appendfsync everysec", 'save ""', f"dir {redis_dir}", "daemonize no", ""]))
    return {"redis_address": f"127.0.0.1:{port}", "redis_port": port, "redis_conf": str(conf), **source}


def _write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


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


def stop_supervisor(fleet: FleetDir) -> None:
    """Stop the supervisor first, so nothing is restarted while the fleet goes down."""
    owned = supervisor_process(fleet.path)
    if owned is not None:
        stop_tree(owned, grace_s=5.0, include_descendants=False)


def stop_head(fleet: FleetDir) -> None:
    """Stop the head and the Redis we started (never an external one) and remove the fleet's Ray
    temp folders and local Redis data: the next `up` starts a new cluster."""
    stop_supervisor(fleet)
    data = fleet.read_head()
    state = read_supervisor_state(fleet.path) or {}
    if data is not None:
        info = HeadInfo.from_json(data)
        if info.owned is not None:
            stop_tree(info.owned, grace_s=10.0)
            shutil.rmtree(fleet.temp_root, ignore_errors=True)  # sessions and logs of head and nodes
    redis = (state.get("redis") or {}).get("owned")
    if redis:
        stop_tree(Owned.from_json(redis), grace_s=5.0)
    for stale in (fleet.path / "redis").glob("appendonly*"):
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    fleet.head_file.unlink(missing_ok=True)
    (fleet.path / SUPERVISOR_STATE).unlink(missing_ok=True)  # last: a repeated stop still finds the Redis pid


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
