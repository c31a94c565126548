"""A real local fleet for integration tests: `rayfleet up` in a private RAYFLEET_HOME, `down` after.

Teardown always runs, and if `down` failed it stops whatever the fleet's own records name (head
and node pids with their create times): tests never leave processes behind, and never touch
processes they did not start.
"""
from __future__ import annotations

import json
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import psutil
import yaml

from rayfleet.cluster.head import supervisor as supervisor_module
from rayfleet.cluster.head.processes import Owned, stop_tree
from tests.conftest import rayfleet, wait_until


@dataclass
class Fleet:
    name: str
    home: Path
    spec_path: Path

    def cli(self, *args: str, timeout: float = 600) -> Any:
        return rayfleet(*args, home=self.home, timeout=timeout)

    def status(self) -> dict[str, Any]:
        result = self.cli("status", "-o", "json", timeout=60)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def pools(self) -> dict[str, dict[str, Any]]:
        return {pool["name"]: pool for pool in self.status()["pools"]}

    def events(self) -> list[dict[str, Any]]:
        result = self.cli("events", "-o", "json", "--limit", "1000", timeout=60)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    @property
    def dir(self) -> Path:
        return self.home / "fleets" / self.name

    def node_record(self, instance: str) -> dict[str, Any]:
        return json.loads((self.dir / "nodes" / instance / "node.json").read_text())

    def wait_ready(self, timeout: float = 180) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            status = self.status()
            ok = all(p["ready"] == p["desired"] and p["starting"] == 0 and p["draining"] == 0
                     and p["spares_ready"] >= p["spares"] for p in status["pools"])
            return status if ok else None
        return wait_until(ready, timeout, f"fleet {self.name} ready")

    def owned_processes(self) -> list[Owned]:
        found = []
        head = self.dir / "head.json"
        if head.exists():
            data = json.loads(head.read_text())
            if "pid" in data:
                found.append(Owned.from_json(data))
        for record in (self.dir / "nodes").glob("*/node.json"):
            data = json.loads(record.read_text())
            if "pid" in data:
                found.append(Owned.from_json(data))
        return found


def write_spec(path: Path, name: str, pools: list[dict[str, Any]], **extra: Any) -> Path:
    spec = {"name": name, "provider": "local", "head": {"cpus": 1}, "pools": pools,
            "scaling": {"loop_period_s": 0.5}, **extra}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def running_fleet(tmp: Path, name: str, pools: list[dict[str, Any]], **extra: Any) -> Iterator[Fleet]:
    """Generator for a module-scoped fixture: yields an up-and-ready fleet, always tears it down."""
    fleet = Fleet(name=name, home=tmp / "home", spec_path=write_spec(tmp / f"{name}.yaml", name, pools, **extra))
    try:
        result = fleet.cli("up", "-f", str(fleet.spec_path), timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr
        yield fleet
    finally:
        fleet.cli("down", timeout=300)
        for owned in fleet.owned_processes():  # only if down failed: our own records, nothing else
            stop_tree(owned, grace_s=2.0)


def supervisor(fleet: Fleet) -> dict[str, Any]:
    """The head supervisor's state (supervisor.json): head and Redis, restarts, events."""
    return json.loads((fleet.dir / "supervisor.json").read_text())


def supervisors(fleet: Fleet) -> list[int]:
    """Pids of every head supervisor running for this fleet's folder, whatever its records say (not
    the short-lived launcher that starts one, whose command line ends the same way)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if cmdline[1:3] == ["-m", supervisor_module.MODULE] and cmdline[-1:] == [str(fleet.dir)]:
            found.append(process.pid)
    return found


def kill_tree(pid: int, signum: int = signal.SIGKILL) -> None:
    """Signal a process the test's fleet started and all its descendants (SIGKILL unless told)."""
    root = psutil.Process(pid)
    for process in [root, *root.children(recursive=True)]:
        try:
            process.send_signal(signum)
        except psutil.Error:
            pass


def raylets(fleet: Fleet) -> dict[str, int]:
    """instance -> raylet pid of this fleet's worker nodes."""
    found = {}
    for process in psutil.process_iter(["name"]):
        if process.info["name"] != "raylet":
            continue
        parent = process.parent()
        cmdline = " ".join(parent.cmdline()) if parent else ""
        if f"rayfleet.io/fleet={fleet.name}," in cmdline and "rayfleet.io/instance=" in cmdline:
            found[cmdline.split("rayfleet.io/instance=")[1].split()[0]] = process.pid
    return found
