"""`rayfleet submit` and the federation's mover placing onto one cell at the same moment: both count
a cell's free nodes as its ready nodes less what its jobs hold, so without one lock both would see
the same free nodes and oversubscribe the cell. Placers here are real processes running the real
placement paths (`submit_to_cell`, `Mover.move`) against fake cells: each cell's status and job list
come from one shared file, and reading a cell's status takes a while, as a GCS round trip does,
which opens the window wide."""
from __future__ import annotations

import contextlib
import fcntl
import json
import multiprocessing
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from rayfleet.cli import cells as cells_module
from rayfleet.cli import mover as mover_module
from rayfleet.cli.commands import status as status_command
from rayfleet.cli.commands import submit as submit_command
from rayfleet.cluster.decide.federation import JobAsk, WatchedJob
from rayfleet.cluster.head import federation_record
from rayfleet.cluster.head.federation_record import read_federation
from rayfleet.cluster.head.fleetdir import FleetDir
from rayfleet.errors import Failed
from rayfleet.jobs.client import submit as job_submit
from rayfleet.jobs.client.spec import JobSpec
from tests.support.fleet_folder import fleet_folder
from tests.support.specs import job_spec

NODES = 2           # ready nodes of pool h100 in each cell
STATUS_READ_S = 0.3  # one cell's status read: the race window
SUBMITTERS = 4


class World:
    """The cells as the placers see them, in one JSON file every process reads and writes under
    its own flock (the fake's, not the one under test): which heads answer, and every job."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextlib.contextmanager
    def locked(self) -> Iterator[dict[str, Any]]:
        with open(self.path.with_suffix(".lock"), "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            data = json.loads(self.path.read_text())
            yield data
            self.path.write_text(json.dumps(data))

    def read(self) -> dict[str, Any]:
        with self.locked() as data:
            return data

    def status(self, fleet: str) -> dict[str, Any]:
        time.sleep(STATUS_READ_S)
        if fleet not in self.read()["alive"]:
            return {"fleet": fleet, "error": "down", "head": {"alive": False, "lost_at": 0.0, "fault_tolerant": False}}
        return {"fleet": fleet, "pools": [{"name": "h100", "desired": NODES, "max": NODES, "gpus_per_node": 8}],
                "nodes": [{"pool": "h100", "state": "ready", "spare": False}] * NODES, "head": None}

    def held(self, record: Any) -> dict[str, dict[str, int]]:
        held: dict[str, dict[str, int]] = {}
        for job in self.read()["jobs"]:
            pools = held.setdefault(job["fleet"], {})
            pools["h100"] = pools.get("h100", 0) + job["nodes"]
        return held

    def submit(self, fleet: str, job: str, nodes: int, by: str) -> str:
        with self.locked() as data:
            data["jobs"].append({"fleet": fleet, "job": job, "nodes": nodes, "by": by})
            return f"{job}-{len(data['jobs'])}"


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    """Fleet `fed`: cell c1's head lost (its job `moved`, 2 nodes, waits to move), cell c2 with 2 free nodes."""
    monkeypatch.setenv("RAYFLEET_HOME", str(tmp_path))
    pool = "pools: [{name: h100, accelerator: H100, gpus_per_node: 8, min_nodes: 2, max_nodes: 2, nodes: 2}]\n"
    for cell in ("fed-c1", "fed-c2"):
        fleet_folder(tmp_path, cell, pool)
    fleet_folder(tmp_path, "fed", "federation: {head_lost_wait_s: 1}\nmax_nodes_per_cell: 2\n"
                 "pools: [{name: h100, accelerator: H100, gpus_per_node: 8, min_nodes: 4, max_nodes: 4, nodes: 4}]\n")
    (tmp_path / "fleets" / "fed" / "federation.json").write_text(json.dumps(
        {"fleet": "fed", "cells": [{"name": "c1", "fleet": "fed-c1"}, {"name": "c2", "fleet": "fed-c2"}]}))
    world = World(tmp_path / "world.json")
    world.path.write_text(json.dumps({"alive": ["fed-c2"], "jobs": []}))
    world.path.with_suffix(".lock").touch()

    monkeypatch.setattr(status_command, "cell_status", world.status)
    monkeypatch.setattr(cells_module, "held_nodes", world.held)
    monkeypatch.setattr(submit_command, "connect", lambda fleet: fleet)  # the fake submission gets the cell's name
    monkeypatch.setattr(job_submit, "submit", lambda fleet, spec, file: world.submit(fleet, spec.name, 1, "submit"))
    watched = [WatchedJob(JobAsk("moved", "h100", 2), "c1")]
    placed = {"moved": {"job": "moved", "cell": "c1", "cell_fleet": "fed-c1", "pool": "h100", "nodes": 2}}
    monkeypatch.setattr(mover_module.Mover, "watched", lambda self, record: (placed, watched))

    def apply(self: Any, record: Any, move: Any, entry: Any, now: float) -> None:
        if move.placement.cell is not None:  # a move no cell takes waits
            world.submit(f"fed-{move.placement.cell}", move.job, move.placement.nodes, "mover")

    monkeypatch.setattr(mover_module.Mover, "apply", apply)
    return world


def submitter(index: int, start: Any, outcomes: Any) -> None:
    start.wait()
    spec = JobSpec.model_validate(job_spec(f"job{index}", workers=1))
    try:
        submit_command.submit_to_cell(read_federation(FleetDir("fed")), spec, Path("job.yaml"))
        outcomes.put(("placed", index))
    except Failed:
        outcomes.put(("refused", index))


def mover(start: Any, outcomes: Any) -> None:
    move = mover_module.Mover(FleetDir("fed").path)
    start.wait()
    move.move(read_federation(FleetDir("fed")))
    outcomes.put(("mover", 0))


def race(world: World) -> dict[str, Any]:
    """Every placer started at once; the cells' jobs after all of them finished."""
    context = multiprocessing.get_context("fork")  # the children keep this test's fakes
    start, outcomes = context.Barrier(SUBMITTERS + 1), context.Queue()
    placers = [context.Process(target=submitter, args=(i, start, outcomes)) for i in range(SUBMITTERS)]
    placers.append(context.Process(target=mover, args=(start, outcomes)))
    for process in placers:
        process.start()
    for process in placers:
        process.join(120)
        assert process.exitcode == 0
    results = [outcomes.get(timeout=5) for _ in placers]
    held = world.held(None).get("fed-c2", {}).get("h100", 0)
    return {"held": held, "jobs": world.read()["jobs"], "results": results}


def test_concurrent_submits_and_a_move_never_oversubscribe_a_cell(world: World) -> None:
    outcome = race(world)
    assert outcome["held"] <= NODES, outcome["jobs"]
    assert {job["fleet"] for job in outcome["jobs"]} == {"fed-c2"}  # c1's head is lost: nothing goes there
    placed = [r for r in outcome["results"] if r[0] == "placed"]
    assert len(placed) == sum(1 for job in outcome["jobs"] if job["by"] == "submit")
    assert outcome["held"] == NODES  # the cell was filled, by submits or by the move, and not beyond
    assert (Path(FleetDir("fed").path) / federation_record.PLACEMENT_LOCK).exists()


def test_without_the_lock_the_same_race_oversubscribes_the_cell(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The harness finds the race it guards against: with `placing` a no-op, the placers overlap."""
    nothing = contextlib.nullcontext
    monkeypatch.setattr(submit_command, "placing", lambda fleet: nothing())
    monkeypatch.setattr(federation_record, "placing", lambda fleet: nothing())
    outcome = race(world)
    assert outcome["held"] > NODES, outcome["jobs"]
