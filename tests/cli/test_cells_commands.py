"""`health`, `scale`, `chaos` and the metrics' targets on a fleet of cells, without Ray: each cell's
connection is a fake whose store answers as a cell's controller would. The same commands on real
cells: tests/cluster/head/test_federation_fleet.py."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from rayfleet.cli import cells as cells_module
from rayfleet.cli.commands import health as health_command
from rayfleet.cli.commands import scale as scale_command
from rayfleet.cli.output import Format
from rayfleet.cluster.head.federation_record import (METRICS_TARGETS, metrics_targets_document, read_federation,
                                                     write_metrics_targets)
from rayfleet.cluster.head.fleetdir import FleetDir
from rayfleet.cluster.rayio import connection
from rayfleet.errors import BadInput, FleetNotRunning, NotFound
from tests.conftest import rayfleet
from tests.support.fleet_folder import fleet_folder

POOL = "pools: [{name: h100, accelerator: H100, gpus_per_node: 8, min_nodes: %d, max_nodes: %d, nodes: %d}]\n"


TOKEN: dict[str, str] = {}
"""The fleet whose token this process holds: a connection authenticates with the token of the
newest `connect` (Ray's token loader is process-wide), as on real cells."""


@dataclass
class Store:
    """A cell's GCS store as the commands read it; a call made while another cell's token is held
    fails as Ray's InvalidAuthToken does."""

    fleet: str
    spec_text: str
    nodes: list[str] = field(default_factory=list)
    targets_now: dict[str, int] = field(default_factory=dict)

    def __getattribute__(self, name: str) -> Any:
        fleet = object.__getattribute__(self, "fleet")
        if name in ("spec", "targets", "put_targets", "status", "health") and TOKEN.get("fleet") != fleet:
            raise RuntimeError(f"InvalidAuthToken: {name} of {fleet} with the token of {TOKEN.get('fleet')}")
        return object.__getattribute__(self, name)

    def spec(self) -> Any:
        import yaml

        from rayfleet.cluster.spec.fleet import FleetSpec

        return FleetSpec.model_validate(yaml.safe_load(self.spec_text))

    def targets(self) -> dict[str, int]:
        return dict(self.targets_now)

    def put_targets(self, targets: dict[str, int]) -> None:
        self.targets_now = dict(targets)

    def status(self) -> dict[str, Any]:
        return {"nodes": [{"instance": n, "pool": "h100", "state": "ready"} for n in self.nodes]}

    def health(self) -> dict[str, Any]:
        return {"observed_at": 1.0, "nodes": [
            {"instance": n, "pool": "h100", "state": "ready", "heartbeat_age_s": 0.5, "probe": "ok",
             "simulated": True, "spare": False, "checks": [{"name": "gpu.xid", "status": "ok", "message": "",
                                                              "value": 0}]} for n in self.nodes]}


@pytest.fixture
def fed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Store]:
    """Fleet `fed` of three cells on this machine's folders: pool h100 split over c1 and c2 (1..4
    nodes each, 2 now), pool cpu in c3 alone; every cell answers unless a test takes it away."""
    monkeypatch.setenv("RAYFLEET_HOME", str(tmp_path))
    specs = {"fed-c1": POOL % (1, 4, 2), "fed-c2": POOL % (1, 4, 2),
             "fed-c3": "pools: [{name: cpu, cpus_per_node: 1, memory: 1Gi, min_nodes: 0, max_nodes: 3, nodes: 1}]\n"}
    stores = {}
    for fleet, spec in specs.items():
        fleet_folder(tmp_path, fleet, spec)
        cell = fleet.split("-")[1]
        stores[fleet] = Store(fleet, f"name: {fleet}\n{spec}", [f"{fleet}-{'cpu' if cell == 'c3' else 'h100'}-0001"])
    fleet_folder(tmp_path, "fed")
    (tmp_path / "fleets" / "fed" / "federation.json").write_text(json.dumps(
        {"fleet": "fed", "cells": [{"name": c, "fleet": f"fed-{c}"} for c in ("c1", "c2", "c3")]}))

    def connect(fleet_name: str | None = None) -> Any:
        if fleet_name not in stores:
            raise FleetNotRunning(f"fleet {fleet_name} is down")
        TOKEN["fleet"] = fleet_name
        return SimpleNamespace(fleet=FleetDir(fleet_name), store=stores[fleet_name])

    for module in (connection, health_command, scale_command):
        monkeypatch.setattr(module, "connect", connect)
    monkeypatch.setattr(scale_command, "check_local_capacity", lambda *args: None)
    return stores


def record() -> Any:
    return read_federation(FleetDir("fed"))


def test_scale_shares_a_split_pool_among_its_cells_and_says_how(fed: dict[str, Store], capsys: Any) -> None:
    scale_command.scale_cells(record(), "h100", 7, wait=False, timeout=1)
    assert (fed["fed-c1"].targets_now, fed["fed-c2"].targets_now) == ({"h100": 4}, {"h100": 3})
    assert "pool h100: desired 4 -> 7 in cells c1, c2 (c1 2 -> 4, c2 2 -> 3)" in " ".join(capsys.readouterr().out.split())
    scale_command.scale_cells(record(), "h100", 3, wait=False, timeout=1)  # shrinking: from the larger first
    assert (fed["fed-c1"].targets_now, fed["fed-c2"].targets_now) == ({"h100": 2}, {"h100": 1})
    assert fed["fed-c3"].targets_now == {}


def test_scale_of_a_pool_in_one_cell_goes_to_that_cell(fed: dict[str, Store], capsys: Any) -> None:
    scale_command.scale_cells(record(), "cpu", 3, wait=False, timeout=1)
    assert fed["fed-c3"].targets_now == {"cpu": 3} and fed["fed-c1"].targets_now == {}
    assert "pool cpu: desired 1 -> 3 in cell c3 (c3 1 -> 3)" in capsys.readouterr().out


def test_scale_beyond_the_cells_bounds_or_of_no_pool_changes_nothing(fed: dict[str, Store]) -> None:
    with pytest.raises(BadInput, match=r"runs in cells c1, c2 with min_nodes..max_nodes 2..8 in all"):
        scale_command.scale_cells(record(), "h100", 9, wait=False, timeout=1)
    with pytest.raises(NotFound, match=r"pool 'gpu' is in no cell of fleet fed; pools: h100, cpu"):
        scale_command.scale_cells(record(), "gpu", 1, wait=False, timeout=1)
    assert all(store.targets_now == {} for store in fed.values())


def test_scale_with_a_cell_of_the_pool_down_changes_nothing_and_names_the_others(fed: dict[str, Store]) -> None:
    del fed["fed-c2"]
    with pytest.raises(FleetNotRunning) as error:
        scale_command.scale_cells(record(), "h100", 3, wait=False, timeout=1)
    message = str(error.value)
    assert "cell c2, which runs part of pool h100, does not answer" in message and "nothing was changed" in message
    assert "--fleet CELL" in message and "fed-c1" in message
    assert fed["fed-c1"].targets_now == {}


def test_a_node_is_found_in_its_cell(fed: dict[str, Store]) -> None:
    assert cells_module.node_fleet(None, "fed-c2-h100-0001", "chaos inject") == "fed-c2"
    assert cells_module.node_fleet("fed-c1", "anything", "chaos inject") == "fed-c1"  # a cell addressed directly
    del fed["fed-c3"]
    with pytest.raises(NotFound, match=r"no node 'fed-c3-cpu-0001' in any cell of fleet fed \(cells that do not "
                                       r"answer: c3\)"):
        cells_module.node_fleet(None, "fed-c3-cpu-0001", "chaos inject")


def test_health_shows_every_cell_and_marks_each_row_with_its_cell(fed: dict[str, Store], capsys: Any) -> None:
    del fed["fed-c3"]
    health_command.federated_health(record(), None, None, Format.json)
    doc = json.loads(capsys.readouterr().out)
    assert doc["fleet"] == "fed" and [c["name"] for c in doc["cells"]] == ["c1", "c2", "c3"]
    assert [n["instance"] for n in doc["cells"][1]["nodes"]] == ["fed-c2-h100-0001"]
    assert "fed-c3 is down" in doc["cells"][2]["error"]
    health_command.federated_health(record(), None, None, Format.table)
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if "-h100-" in line]
    assert [(row[0], row[1]) for row in rows] == [("c1", "fed-c1-h100-0001"), ("c2", "fed-c2-h100-0001")]
    assert "cell c3 does not answer" in out


def test_health_with_no_cell_answering_fails_naming_each(fed: dict[str, Store]) -> None:
    fed.clear()
    with pytest.raises(FleetNotRunning, match="no cell answers"):
        health_command.federated_health(record(), None, None, Format.json)


def test_the_metrics_targets_label_each_cell_and_are_rewritten_only_on_change(tmp_path: Path) -> None:
    doc = metrics_targets_document("fed", [("c1", ["10.0.0.1:8080", "10.0.0.2:8080"]), ("c2", []),
                                           ("c3", ["10.0.1.1:8080"])])
    assert doc == [{"targets": ["10.0.0.1:8080", "10.0.0.2:8080"], "labels": {"federation": "fed", "cell": "c1"}},
                   {"targets": ["10.0.1.1:8080"], "labels": {"federation": "fed", "cell": "c3"}}]
    fleet = FleetDir("fed", home=tmp_path)
    assert write_metrics_targets(fleet, doc) and not write_metrics_targets(fleet, doc)
    path = fleet.path / METRICS_TARGETS
    assert json.loads(path.read_text()) == doc


def test_a_fleet_of_cells_that_is_down_says_which_cells_do_not_answer(tmp_path: Path) -> None:
    for cell in ("fed-c1", "fed-c2"):
        fleet_folder(tmp_path, cell, POOL % (1, 2, 1))
    fleet_folder(tmp_path, "fed")
    (tmp_path / "fleets" / "fed" / "federation.json").write_text(json.dumps(
        {"fleet": "fed", "cells": [{"name": "c1", "fleet": "fed-c1"}, {"name": "c2", "fleet": "fed-c2"}]}))
    for command in (["health"], ["dashboard"]):
        result = rayfleet(*command, home=tmp_path, timeout=60)
        assert result.returncode == 1 and "no cell answers" in result.stderr, result.stdout + result.stderr
    scale = rayfleet("scale", "h100", "--nodes", "2", home=tmp_path, timeout=60)
    assert scale.returncode == 1 and "cell c1, which runs part of pool h100, does not answer" in scale.stderr
    for command in (["chaos", "inject", "fed-c1-h100-0001", "--fault", "clear"], ["quarantine", "show", "fed-c1-h100-0001"]):
        result = rayfleet(*command, home=tmp_path, timeout=60)
        assert result.returncode == 2 and "cells that do not answer: c1, c2" in result.stderr, result.stderr
