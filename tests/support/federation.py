"""A real local fleet of cells for integration tests: `rayfleet up` of a spec of cells in a
private RAYFLEET_HOME, `down` after; each cell is also a `Fleet` (tests/support/fleet.py) for
what a test reads of one cell (its head record, its job storage).

Teardown always runs, and if `down` failed it stops whatever each cell's own records name:
tests never leave processes behind, and never touch processes they did not start.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from rayfleet.cli.mover import mover_process, stop_mover
from rayfleet.cluster.head.fleetdir import FleetDir
from tests.support.fleet import Fleet, tear_down, write_spec


@dataclass
class Federation:
    name: str
    home: Path
    spec_path: Path

    def cli(self, *args: str, timeout: float = 600) -> Any:
        return Fleet(self.name, self.home, self.spec_path).cli(*args, timeout=timeout)

    def json(self, *args: str) -> Any:
        result = self.cli(*args, "-o", "json", timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        return json.loads(result.stdout)

    def record(self) -> dict[str, Any]:
        """federation.json: the fleet's cells, each {name, fleet}."""
        return json.loads((self.home / "fleets" / self.name / "federation.json").read_text())

    def cell(self, name: str) -> Fleet:
        """Cell `name` as a fleet of its own (`<fleet>-<cell>`)."""
        fleet = next(c["fleet"] for c in self.record()["cells"] if c["name"] == name)
        return Fleet(fleet, self.home, self.home / "fleets" / fleet / "fleet.yaml")

    def cells(self) -> list[Fleet]:
        return [self.cell(c["name"]) for c in self.record()["cells"]]

    def jobs_by_cell(self) -> dict[str, dict[str, dict[str, Any]]]:
        """`rayfleet jobs -o json`: cell name -> job name -> its row."""
        return {cell["name"]: {row["job"]: row for row in cell["jobs"]} for cell in self.json("jobs")["cells"]}

    def mover(self) -> Any:
        """The federation's running mover process (an Owned), or None."""
        return mover_process(self.home / "fleets" / self.name)

    def placements(self) -> list[dict[str, Any]]:
        path = self.home / "fleets" / self.name / "placements.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def running_federation(tmp: Path, name: str, pools: list[dict[str, Any]], **extra: Any) -> Iterator[Federation]:
    """Generator for a module-scoped fixture: yields a fleet of cells up and ready, always torn down."""
    federation = Federation(name, tmp / "home", write_spec(tmp / f"{name}.yaml", name, pools, **extra))
    try:
        result = federation.cli("up", "-f", str(federation.spec_path), timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr
        yield federation
    finally:
        down = federation.cli("down", timeout=300)
        if down.returncode and (federation.home / "fleets" / name / "federation.json").exists():
            stop_mover(FleetDir(name, home=federation.home))  # `down` failed: stop what the records name
            for cell in federation.cells():
                tear_down(cell)
