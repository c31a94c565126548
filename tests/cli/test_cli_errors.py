"""The common failures, through the real `rayfleet` script: one line saying what to do, no
traceback, the documented exit code (1 failed, 2 bad input). No Ray is started here."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from rayfleet.cluster.head.processes import free_port
from tests.conftest import rayfleet
from tests.support.fleet_folder import fleet_folder


def one_line_error(result, code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize("command", [["status"], ["events"], ["jobs"], ["dashboard"], ["logs", "x"],
                                     ["scale", "h100", "--nodes", "1"], ["down"]])
def test_no_fleet_up_says_how_to_start_one(tmp_path: Path, command: list[str]) -> None:
    line = one_line_error(rayfleet(*command, home=tmp_path, timeout=60), 2)
    assert "rayfleet up -f" in line


def test_an_unknown_fleet_name_lists_the_known_ones(tmp_path: Path) -> None:
    fleet_folder(tmp_path, "alpha")
    line = one_line_error(rayfleet("status", "--fleet", "beta", home=tmp_path, timeout=60), 2)
    assert "beta" in line and "known: alpha" in line


def test_a_fleet_that_is_down_names_its_spec_to_start_it_again(tmp_path: Path) -> None:
    folder = fleet_folder(tmp_path, "alpha")
    line = one_line_error(rayfleet("status", home=tmp_path, timeout=60), 1)
    assert f"rayfleet up -f {folder / 'fleet.yaml'}" in line


def test_a_crashed_head_says_to_clean_up_and_start_again(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"  # bound, never listening, released: nothing answers there
    fleet_folder(tmp_path, "alpha", head={"gcs_address": address, "dashboard_url": "http://127.0.0.1:1"})
    for command in (["events"], ["dashboard", "-o", "json"], ["jobs"]):
        line = one_line_error(rayfleet(*command, home=tmp_path, timeout=60), 1)
        assert address in line and "rayfleet down --fleet alpha" in line and "rayfleet up -f" in line


def test_a_missing_spec_file_is_bad_input_naming_it(tmp_path: Path) -> None:
    line = one_line_error(rayfleet("up", "-f", str(tmp_path / "nope.yaml"), home=tmp_path, timeout=60), 2)
    assert "nope.yaml: no such file" in line


def test_following_a_log_as_json_is_refused_before_anything_is_contacted(tmp_path: Path) -> None:
    line = one_line_error(rayfleet("logs", "job", "--follow", "-o", "json", home=tmp_path, timeout=60), 2)
    assert "drop --follow" in line


def test_an_unexpected_failure_is_one_line_too_with_the_way_to_the_traceback(tmp_path: Path) -> None:
    home = tmp_path / "not-a-folder"
    home.write_text("")  # RAYFLEET_HOME is a file: reading <home>/current fails with NotADirectoryError
    line = one_line_error(rayfleet("status", home=home, timeout=60), 1)
    assert "NotADirectoryError" in line and "RAYFLEET_DEBUG=1" in line
    debug = rayfleet("status", home=home, timeout=60, env={"RAYFLEET_DEBUG": "1"})
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_version_names_rayfleet_ray_and_torch_as_installed(tmp_path: Path) -> None:
    from importlib.metadata import version

    result = rayfleet("--version", home=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (f"rayfleet {version('rayfleet')} (ray {version('ray')}, "
                                     f"torch {version('torch')})")


def _federation_folder(home: Path) -> None:
    """A fleet of two cells that is down: the federation's record and each cell's folder."""

    for cell in ("fed-c1", "fed-c2"):
        fleet_folder(home, cell)
    fleet_folder(home, "fed")
    (home / "fleets" / "fed" / "federation.json").write_text(json.dumps(
        {"fleet": "fed", "cells": [{"name": "c1", "fleet": "fed-c1"}, {"name": "c2", "fleet": "fed-c2"}]}))


@pytest.mark.parametrize("command", [["status"], ["jobs"]])
def test_a_fleet_of_cells_that_is_down_names_each_cell(tmp_path: Path, command: list[str]) -> None:
    _federation_folder(tmp_path)
    line = one_line_error(rayfleet(*command, home=tmp_path, timeout=60), 1)
    assert "no cell answers" in line and "fleet fed-c1 is down" in line and "fleet fed-c2 is down" in line


@pytest.mark.parametrize("command", [["quarantine", "list"]])
def test_a_command_of_one_cluster_given_a_fleet_of_cells_asks_for_a_cell(tmp_path: Path, command: list[str]) -> None:
    _federation_folder(tmp_path)
    line = one_line_error(rayfleet(*command, home=tmp_path, timeout=60), 2)
    assert "is 2 cells" in line and "fed-c1, fed-c2" in line and "--fleet" in line


MOVE = {"job": "first", "cell": "c2", "cell_fleet": "fed-c2", "pool": "h100", "nodes": 1, "grow_by": 0,
        "submission_id": "first-2", "at": 1000.0,
        "why": "cell c1's head (without fault tolerance) has been lost for 12 s, over the 10 s the policy waits",
        "moved_from": {"cell": "c1", "cell_fleet": "fed-c1", "submission_id": "first-1"},
        "reasons": [{"cell": "c2", "verdict": "chosen", "why": "pool h100: 1 free nodes for 1, fits on free nodes now"}]}
PLACE = {"job": "first", "cell": "c1", "cell_fleet": "fed-c1", "pool": "h100", "nodes": 1, "grow_by": 0,
         "submission_id": "first-1", "at": 900.0,
         "reasons": [{"cell": "c1", "verdict": "chosen", "why": "pool h100: 1 free nodes for 1"},
                     {"cell": "c2", "verdict": "passed over", "why": "c1 ranks first: name order (a tie)"}]}


def test_events_of_a_fleet_of_cells_list_its_placements_and_moves_with_their_reasons(tmp_path: Path) -> None:
    _federation_folder(tmp_path)
    (tmp_path / "fleets" / "fed" / "placements.jsonl").write_text(
        "\n".join(json.dumps(entry) for entry in (PLACE, MOVE)) + "\n")
    result = rayfleet("events", "-o", "json", home=tmp_path, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    events = json.loads(result.stdout)
    assert [(e["kind"], e["pool"]) for e in events] == [("place", "h100"), ("move", "h100")]
    assert "moved from cell c1 to cell c2 as first-2" in events[1]["message"] and events[1]["reason"] == MOVE["why"]
    table = rayfleet("events", "--kind", "move", home=tmp_path, timeout=60)
    words = " ".join(table.stdout.split())  # the table folds long cells
    assert table.returncode == 0 and "cell c1 does not answer" in words and "lost for 12" in words, words
    explained = rayfleet("explain", "first", home=tmp_path, timeout=60)  # the cell is down: the record still says why
    assert explained.returncode == 0, explained.stdout + explained.stderr
    assert "moved from cell c1 (submission first-1) to cell c2" in explained.stdout and "lost for 12 s" in explained.stdout


def test_a_job_no_cell_was_given_is_not_looked_for_in_the_cells(tmp_path: Path) -> None:
    _federation_folder(tmp_path)
    line = one_line_error(rayfleet("logs", "nope", home=tmp_path, timeout=60), 2)
    assert "placed no such job" in line


def test_up_of_one_cluster_refuses_the_name_of_a_fleet_of_cells(tmp_path: Path) -> None:
    _federation_folder(tmp_path)
    spec = tmp_path / "one.yaml"
    spec.write_text("name: fed\npools: [{name: h100, accelerator: H100, gpus_per_node: 8, nodes: 1}]\n")
    line = one_line_error(rayfleet("up", "-f", str(spec), home=tmp_path, timeout=60), 2)
    assert "runs as cells" in line and "rayfleet down --fleet fed" in line
    assert not (tmp_path / "fleets" / "fed" / "head.json").exists()


def test_a_bad_federation_wait_is_refused_before_anything_starts(tmp_path: Path) -> None:
    spec = tmp_path / "cells.yaml"
    spec.write_text("name: fed\nmax_nodes_per_cell: 1\nfederation: {head_lost_wait_s: -5}\n"
                    "pools: [{name: h100, accelerator: H100, gpus_per_node: 8, nodes: 2, max_nodes: 2}]\n")
    line = one_line_error(rayfleet("up", "-f", str(spec), home=tmp_path / "home", timeout=60), 2)
    assert str(spec) in line and "federation.head_lost_wait_s: got -5" in line and "more than 0" in line, line
    assert not (tmp_path / "home" / "fleets").exists()
