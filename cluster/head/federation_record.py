"""A fleet of cells on the machine that runs `rayfleet up`: its federation folder.

Each cell is a fleet of its own (`RAYFLEET_HOME/fleets/<fleet>-<cell>`, with its head, supervisor,
nodes and storage). The federation's folder, `RAYFLEET_HOME/fleets/<fleet>`, holds only what names
the cells (`federation.json`), the spec as given (`fleet.yaml`) and where each job was placed and
why (`placements.jsonl`, one line per submission). Everything else is read from the cells.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from rayfleet.cluster.head.fleetdir import FleetDir
from rayfleet.cluster.head.processes import write_json_atomic
from rayfleet.errors import Failed

FEDERATION = "federation.json"
PLACEMENTS = "placements.jsonl"
PLACEMENT_LOCK = "placement.lock"
PLACEMENT_WAIT_S = 300.0
"""How long a placer waits for another's placement: one holds the lock through a job submission,
which may itself wait up to 120 s for a cell's head that its supervisor is bringing back
(cluster/rayio/connection.py HEAD_RESTART_WAIT_S); more than twice that means something is stuck."""


@dataclass(frozen=True, slots=True)
class CellRecord:
    name: str    # the cell's name in the fleet
    fleet: str   # its own fleet's name, `<fleet>-<cell>`


@dataclass(frozen=True, slots=True)
class FederationRecord:
    fleet: str
    cells: tuple[CellRecord, ...]

    def cell(self, name: str) -> CellRecord | None:
        return next((c for c in self.cells if name in (c.name, c.fleet)), None)


def read_federation(fleet: FleetDir) -> FederationRecord | None:
    """The fleet's cells, or None for a fleet of one cell (no federation record)."""
    try:
        data = json.loads((fleet.path / FEDERATION).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return FederationRecord(data["fleet"], tuple(CellRecord(c["name"], c["fleet"]) for c in data["cells"]))


def write_federation(fleet: FleetDir, record: FederationRecord) -> None:
    fleet.ensure()
    write_json_atomic(fleet.path / FEDERATION, {
        "fleet": record.fleet, "cells": [{"name": c.name, "fleet": c.fleet} for c in record.cells]})


def forget_federation(fleet: FleetDir) -> None:
    """The fleet no longer runs as cells (after `down` stopped each): its name is free for either."""
    (fleet.path / FEDERATION).unlink(missing_ok=True)


@contextlib.contextmanager
def placing(fleet: FleetDir, wait_s: float = PLACEMENT_WAIT_S) -> Iterator[None]:
    """Hold the federation's placement lock from reading the cells' free nodes until the placement
    is recorded (by then the job is in its cell's job list, where the next placer counts it).

    `rayfleet submit` and the mover each count a cell's free nodes as its ready nodes less those
    its unfinished jobs hold; two placers counting at once would both see the same free nodes and
    oversubscribe the cell. The lock file names the holder's pid; the lock goes with the process,
    however it ends. Failed if another placer holds it past `wait_s`."""
    from rayfleet.cluster.head.supervisor import hold_lock

    fleet.ensure()
    deadline = time.monotonic() + wait_s
    while (fd := hold_lock(fleet.path, PLACEMENT_LOCK)) is None:
        if time.monotonic() > deadline:
            holder = (fleet.path / PLACEMENT_LOCK).read_text().strip()
            raise Failed(f"fleet {fleet.name}: another placement (pid {holder}) has held {fleet.path / PLACEMENT_LOCK} "
                         f"for over {wait_s:.0f} s; try again once it is done")
        time.sleep(0.05)
    try:
        yield
    finally:
        os.close(fd)  # closing the only descriptor releases the flock


def record_placement(fleet: FleetDir, entry: dict[str, Any]) -> None:
    """Append one placement (job, submission, cell, reasons); a line is written whole or not at all
    as far as readers go: `placements` skips a torn last line."""
    fleet.ensure()
    with open(fleet.path / PLACEMENTS, "a") as handle:
        handle.write(json.dumps(entry, sort_keys=True) + "\n")


def placements(fleet: FleetDir) -> list[dict[str, Any]]:
    """Every placement recorded, oldest first."""
    try:
        lines = (fleet.path / PLACEMENTS).read_text().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a write cut short by a crash
    return out


def placement_of(fleet: FleetDir, ident: str) -> dict[str, Any] | None:
    """The newest placement of a job name or a submission id."""
    return next((p for p in reversed(placements(fleet)) if ident in (p["job"], p.get("submission_id"))), None)


METRICS_TARGETS = "prometheus_targets.json"
"""Every cell's Prometheus endpoints in one `file_sd_configs` file, each cell's group labelled
`federation` and `cell`: Prometheus adds both labels to every series it scrapes there (the
controllers' metrics and the jobs' alike), so one query reads the whole fleet or one cell. The
federation's mover keeps it current; Prometheus rereads a changed file on its own."""


def metrics_targets_document(fleet: str, cells: Sequence[tuple[str, Sequence[str]]]) -> list[dict[str, Any]]:
    """The `file_sd_configs` document: one group per cell that has endpoints ((cell, targets) pairs,
    a target being `host:port`), in the cells' order."""
    return [{"targets": list(targets), "labels": {"federation": fleet, "cell": cell}}
            for cell, targets in cells if targets]


def write_metrics_targets(fleet: FleetDir, document: list[dict[str, Any]]) -> bool:
    """Replace the federation's targets file when its content changed; whether it did."""
    path = fleet.path / METRICS_TARGETS
    try:
        if json.loads(path.read_text()) == document:
            return False
    except (FileNotFoundError, json.JSONDecodeError):
        pass
    fleet.ensure()
    write_json_atomic(path, document)
    return True
