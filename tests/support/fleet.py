"""A real local fleet for integration tests: `rayfleet up` in a private RAYFLEET_HOME, `down` after.

Teardown always runs, and if `down` failed it stops whatever the fleet's own records name (head
and node pids with their create times): tests never leave processes behind, and never touch
processes they did not start.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

from rayfleet.cluster.head.processes import Owned, stop_tree
from rayfleet.cluster.rayio import gcs
from rayfleet.cluster.rayio.connection import use_token
from rayfleet.jobs.supervision import history
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

    def node_state(self, instance: str) -> str | None:
        """The node's state as the controller has it (`rayfleet status`); None once it is gone."""
        return next((n["state"] for n in self.status()["nodes"] if n["instance"] == instance), None)

    def ready_nodes(self) -> list[str]:
        """The ready nodes that take work (spares left out), sorted by instance name."""
        return sorted(n["instance"] for n in self.status()["nodes"] if n["state"] == "ready" and not n["spare"])

    def events(self) -> list[dict[str, Any]]:
        result = self.cli("events", "-o", "json", "--limit", "1000", timeout=60)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    @property
    def dir(self) -> Path:
        return self.home / "fleets" / self.name

    def head_record(self) -> dict[str, Any]:
        """head.json: the head's pid, GCS address and dashboard URL."""
        return json.loads((self.dir / "head.json").read_text())

    def job_dir(self, job: str) -> Path:
        """The job's folder in the fleet's storage (the one its `up` recorded: the cells of a
        federation share one): its history and a run folder per submission."""
        runtime = self.dir / "runtime.json"
        storage = json.loads(runtime.read_text()).get("storage") if runtime.exists() else None
        return history.job_dir(storage or self.dir / "storage", job)

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
        tear_down(fleet)


def tear_down(fleet: Fleet) -> None:
    """`rayfleet down`, then stop whatever the fleet's records still name (only if down failed)."""
    fleet.cli("down", timeout=300)
    for owned in fleet.owned_processes():  # our own records, nothing else
        stop_tree(owned, grace_s=2.0)


def supervisor(fleet: Fleet) -> dict[str, Any]:
    """The head supervisor's state (supervisor.json): head and Redis, restarts, events."""
    return json.loads((fleet.dir / "supervisor.json").read_text())


def gcs_client(fleet: Fleet) -> Any:
    """A GCS client of the fleet's head, with the fleet's token in use for this process."""
    use_token(fleet.dir / "auth_token")
    return gcs.client(fleet.head_record()["gcs_address"])


def lines_at_80_columns(fleet: Fleet, *args: str) -> list[str]:
    """`rayfleet *args` in an 80-column terminal: its lines, each checked to fit."""
    result = rayfleet(*args, home=fleet.home, timeout=60, env={"COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines and all(len(line.rstrip()) <= 80 for line in lines), result.stdout
    return lines
