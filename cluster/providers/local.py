"""The local provider: each node is a real `ray start --block` process on this machine.

A node advertises its pool's resources (GPUs as Ray `GPU` resources even where the machine has
none) and the labels that join it to its record. Its folder under the fleet's `nodes/` holds
`node.json` (name, pool, pid and create time) and `node.log`; that folder is the provider's
"cloud API": it is how `instances()` answers after a controller restart.

`ray start --block` stays in the foreground as the parent of the node's raylet and agents; when the
raylet dies (SIGKILL included) it exits within about a second and takes the rest with it, which is
what lets the controller see a killed node at once instead of after Ray's ~15 s heartbeat timeout.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import signal
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping, Sequence

from rayfleet.cluster.head.processes import (
    Owned, descendants, find_by_marker, process_of, signal_owned, spawn_detached, stop_tree, write_json_atomic,
)
from rayfleet.cluster.spec.fleet import FleetSpec, PoolSpec
from rayfleet.cluster.decide.view import Instance, InstanceStatus
from rayfleet.names import ACCELERATOR_LABEL, FLEET_LABEL, INSTANCE_LABEL, POOL_LABEL

log = logging.getLogger(__name__)

START_GRACE_S = 30.0
"""A node folder without a pid (a crash between recording and spawning) counts as pending this long."""

STOP_GRACE_S = 5.0
"""`ray start --block` answers SIGTERM by draining for up to 30 s; the controller drains through the
GCS first when it matters, so 5 s of grace, then SIGKILL."""


def ray_executable() -> str:
    """The `ray` script of the Python that runs rayfleet (the fleet's virtualenv)."""
    candidate = Path(sys.executable).with_name("ray")
    return str(candidate) if candidate.exists() else "ray"


def inherited_environment() -> dict[str, str]:
    """Ours, minus what a Ray worker inherits from its raylet (a node started from inside an actor
    must not think it is that actor's worker)."""
    return {key: value for key, value in os.environ.items()
            if not key.startswith("RAY_") and key not in ("CUDA_VISIBLE_DEVICES",)}


def rayfleet_environment(token_path: Path) -> dict[str, str]:
    """What rayfleet sets for every Ray process of a fleet: token authentication, no usage stats.
    Only this is ever written to disk (supervisor-config.json), never the inherited environment."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path), "RAY_USAGE_STATS_ENABLED": "0"}


def node_environment(token_path: Path, extra: Mapping[str, str] = {}) -> dict[str, str]:
    """Environment for a node's processes."""
    return {**inherited_environment(), **rayfleet_environment(token_path), **extra}


class LocalProvider:
    def __init__(self, fleet: str, fleet_dir: Path, gcs_address: str, token_path: Path,
                 spec: FleetSpec, temp_root: Path) -> None:
        self.fleet = fleet
        self.nodes_dir = fleet_dir / "nodes"
        self.gcs_address = gcs_address
        self.token_path = token_path
        self.spec = spec
        self.temp_root = temp_root
        self._stopper = ThreadPoolExecutor(max_workers=8, thread_name_prefix="rayfleet-stop")
        self._stopping: dict[str, Future[None]] = {}
        self._raylets: dict[str, Owned] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_runtime(cls, spec: FleetSpec, runtime: Mapping[str, Any]) -> LocalProvider:
        return cls(fleet=spec.name, fleet_dir=Path(runtime["fleet_dir"]), gcs_address=runtime["gcs_address"],
                   token_path=Path(runtime["token_path"]), spec=spec, temp_root=Path(runtime["temp_root"]))

    # --- the interface ------------------------------------------------------------------------
    def launch(self, pool: PoolSpec, names: Sequence[str]) -> list[Instance]:
        return [self._launch_one(pool, name) for name in names]

    def terminate(self, names: Sequence[str], wait: bool = False) -> None:
        futures = [self._terminate_one(name) for name in names]
        if wait:
            for future in futures:
                future.result()

    def instances(self) -> list[Instance]:
        if not self.nodes_dir.is_dir():
            return []
        found = []
        for folder in sorted(self.nodes_dir.iterdir()):
            record = self._read(folder.name)
            if record is not None:
                found.append(self._instance(folder.name, record))
        return found

    # --- launching ----------------------------------------------------------------------------
    def _launch_one(self, pool: PoolSpec, name: str) -> Instance:
        record = self._read(name)
        if record is not None:
            owned = self._owned(name, record)
            if owned is not None and owned.alive():
                return self._instance(name, record)
        marker = self._marker(name)
        orphans = [owned for owned in find_by_marker(marker) if owned.alive()]
        if orphans:  # spawned before a crash lost its pid: adopt it, never start a second one
            record = {"name": name, "pool": pool.name, "launched_at": time.time(), **orphans[0].to_json()}
            write_json_atomic(self._folder(name) / "node.json", record)
            return self._instance(name, record)
        record = {"name": name, "pool": pool.name, "launched_at": time.time()}
        write_json_atomic(self._folder(name) / "node.json", record)  # intent first: a crash is seen
        owned = spawn_detached(self.node_command(pool, name), self._folder(name) / "node.log",
                               env=node_environment(self.token_path, self._pool_env(pool)))
        record.update(owned.to_json())
        write_json_atomic(self._folder(name) / "node.json", record)
        log.info("launched local node %s (pid %s) for pool %s", name, owned.pid, pool.name)
        return self._instance(name, record)

    def node_command(self, pool: PoolSpec, name: str) -> list[str]:
        labels = {FLEET_LABEL: self.fleet, POOL_LABEL: pool.name, **pool.labels}
        if pool.accelerator:
            labels[ACCELERATOR_LABEL] = pool.accelerator
        labels[INSTANCE_LABEL] = name  # last: `_marker` finds the process by it
        resources: dict[str, float] = {}
        if pool.accelerator:
            resources[f"accelerator_type:{pool.accelerator}"] = 1.0
        local = pool.provider.local
        object_store = local.object_store_memory if local else 200 * 2**20
        return [
            ray_executable(), "start", "--block",
            f"--address={self.gcs_address}",
            "--node-ip-address=127.0.0.1",
            # No CPUs until the controller admits the node (checks passed, not a spare): nothing
            # that needs a CPU, which is every task and training worker, can land on it before.
            "--num-cpus=0",
            f"--num-gpus={pool.gpus_per_node}",
            f"--memory={pool.memory}",
            f"--object-store-memory={object_store}",
            f"--resources={json.dumps(resources)}",
            "--labels=" + ",".join(f"{key}={value}" for key, value in labels.items()),
            f"--temp-dir={self._temp_dir(name)}",
            "--disable-usage-stats",
            "--log-style=record",
        ]

    def _pool_env(self, pool: PoolSpec) -> dict[str, str]:
        env = dict(pool.provider.local.env) if pool.provider.local else {}
        ft = self.spec.head.fault_tolerance
        if ft.enabled:
            # How long the raylet waits for a restarted head before it gives up and exits (Ray: 60 s).
            env["RAY_gcs_rpc_server_reconnect_timeout_s"] = str(int(ft.reconnect_timeout_s))
        return env

    # --- terminating --------------------------------------------------------------------------
    def _terminate_one(self, name: str) -> Future[None]:
        with self._lock:
            running = self._stopping.get(name)
            if running is not None and not running.done():
                return running
            future = self._stopper.submit(self._stop_and_forget, name)
            self._stopping[name] = future
            return future

    def _stop_and_forget(self, name: str) -> None:
        record = self._read(name)
        owned = self._owned(name, record) if record is not None else None
        if owned is not None:
            stop_tree(owned, grace_s=STOP_GRACE_S)
        shutil.rmtree(self._temp_dir(name), ignore_errors=True)
        shutil.rmtree(self._folder(name), ignore_errors=True)
        self._raylets.pop(name, None)
        log.info("terminated local node %s", name)

    # --- records ------------------------------------------------------------------------------
    def _instance(self, name: str, record: Mapping[str, Any]) -> Instance:
        owned = self._owned(name, record)
        launched_at = float(record.get("launched_at", 0.0))
        raylet = self._raylet(name, owned)
        if raylet is not None and not raylet.alive():
            # `ray start --block` needs ~1.3 s (more under load) to notice its raylet died; the
            # raylet's own pid tells at once.
            status, detail = InstanceStatus.TERMINATED, "raylet exited (its process is gone)"
        elif owned is not None and owned.alive():
            status, detail = InstanceStatus.RUNNING, ""
        elif "pid" not in record and time.time() - launched_at < START_GRACE_S:
            status, detail = InstanceStatus.PENDING, "starting"
        else:
            status, detail = InstanceStatus.TERMINATED, self._exit_detail(name)
        return Instance(id=name, pool=str(record.get("pool", "")), status=status, launched_at=launched_at,
                        detail=detail, provider_id=str(owned.pid) if owned else None)

    def _raylet(self, name: str, owned: Owned | None) -> Owned | None:
        """The node's raylet process, found once under `ray start` and remembered."""
        if name in self._raylets:
            return self._raylets[name]
        if owned is None:
            return None
        for child in descendants(owned):
            process = process_of(child)
            if process is not None and process.name() == "raylet":
                self._raylets[name] = child
                return child
        return None

    def kill(self, name: str) -> int:
        """Chaos: SIGKILL every process of the node at once, as a hard node death. Returns the count."""
        record = self._read(name)
        owned = self._owned(name, record) if record is not None else None
        if owned is None or not owned.alive():
            raise ValueError(f"node {name} has no running process to kill")
        tree = [owned, *descendants(owned)]
        for member in tree:
            signal_owned(member, signal.SIGKILL)
        return len(tree)

    def _owned(self, name: str, record: Mapping[str, Any]) -> Owned | None:
        if "pid" in record:
            return Owned.from_json(record)
        orphans = find_by_marker(self._marker(name))
        return orphans[0] if orphans else None

    def _exit_detail(self, name: str) -> str:
        """Why the node's process exited, from the tail of its log (Ray prints the exit codes)."""
        try:
            with open(self._folder(name) / "node.log", "rb") as handle:
                handle.seek(0, os.SEEK_END)
                handle.seek(max(0, handle.tell() - 4096))
                tail = handle.read().decode(errors="replace")
        except FileNotFoundError:
            return "process exited"
        match = re.search(r"END (\w+)\.out tail \(exit code\(s\)=([^)]*\))", tail)
        if match:
            return f"{match.group(1)} exited with {match.group(2)}"
        return "process exited"

    def _read(self, name: str) -> dict[str, Any] | None:
        try:
            return json.loads((self._folder(name) / "node.json").read_text())
        except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
            return None

    def _folder(self, name: str) -> Path:
        return self.nodes_dir / name

    def _temp_dir(self, name: str) -> Path:
        # Short and unique: Ray puts Unix sockets under it, and their paths must stay under 107 bytes.
        return self.temp_root / hashlib.sha1(name.encode()).hexdigest()[:10]

    def _marker(self, name: str) -> str:
        # The instance label ends the --labels argument, so "=name " cannot match a longer name.
        return f"{INSTANCE_LABEL}={name} "


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)

