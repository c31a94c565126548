"""A fleet of two cells on this machine, each its own Ray cluster (a head and one 1-CPU node):
`rayfleet up` starts both, one `rayfleet submit` per job places the jobs on different cells,
`status` and `jobs` show both cells, and a cell whose head is SIGKILLed (fault tolerance off)
costs the other cell's job nothing: it keeps training and finishes."""
from __future__ import annotations

import time
from typing import Iterator

import pytest
import yaml

from tests.conftest import wait_until
from tests.support.federation import Federation, running_federation
from tests.support.fleet_jobs import job_curve
from tests.support.fleet_processes import kill_tree
from tests.support.specs import h100_pool, job_spec

POOLS = [h100_pool(cpus_per_node=1, memory="8Gi", min_nodes=2, max_nodes=2, nodes=2)]
TRAINING = {"workers": 1, "steps": 120, "data": {"seq_len": 64, "global_batch": 4}}


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    # max_nodes_per_cell 1 cuts pool h100 into two cells (c1, c2) of one node each
    yield from running_federation(tmp_path_factory.mktemp("cells"), "fed", POOLS, max_nodes_per_cell=1)


def test_up_starts_each_cell_as_its_own_fleet_and_status_shows_both(fed: Federation) -> None:
    assert [(c["name"], c["fleet"]) for c in fed.record()["cells"]] == [("c1", "fed-c1"), ("c2", "fed-c2")]
    assert (fed.home / "current").read_text().strip() == "fed"
    heads = [cell.head_record() for cell in fed.cells()]
    assert len({h["gcs_address"] for h in heads}) == 2 and len({h["pid"] for h in heads}) == 2
    status = fed.json("status")
    assert status["fleet"] == "fed" and [c["name"] for c in status["cells"]] == ["c1", "c2"]
    for cell in status["cells"]:
        assert cell["fleet"] == f"fed-{cell['name']}"
        assert [(p["name"], p["ready"]) for p in cell["pools"]] == [("h100", 1)]
    again = fed.cli("up", "-f", str(fed.spec_path), timeout=300)  # repeated: both cells adopted
    assert again.returncode == 0 and again.stdout.count("is already up") == 2, again.stdout + again.stderr
    assert [cell.head_record()["pid"] for cell in fed.cells()] == [h["pid"] for h in heads]


def test_jobs_land_on_different_cells_and_a_lost_cell_costs_the_other_nothing(fed: Federation) -> None:
    for name in ("first", "second"):
        path = fed.home.parent / f"{name}.yaml"
        path.write_text(yaml.safe_dump(job_spec(name, **TRAINING)))
        result = fed.cli("submit", "-f", str(path), timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
    placed = {p["job"]: p["cell"] for p in fed.placements()}
    assert placed == {"first": "c1", "second": "c2"}
    by_cell = fed.jobs_by_cell()
    assert set(by_cell["c1"]) == {"first"} and set(by_cell["c2"]) == {"second"}
    explained = fed.cli("explain", "second", timeout=120)
    assert explained.returncode == 0 and "placed on cell c2" in explained.stdout, explained.stdout + explained.stderr
    assert "cell c1: refused" in explained.stdout

    survivor, lost = fed.cell("c2"), fed.cell("c1")
    wait_until(lambda: len(job_curve(lost, "first")) >= 3 and len(job_curve(survivor, "second")) >= 3, 180,
               "both jobs training")
    kill_tree(lost.head_record()["pid"])  # fault tolerance is off: cell c1's cluster is gone
    killed_at = time.time()
    step_at_kill = job_curve(survivor, "second")[-1]["step"]
    wait_until(lambda: any(p["time"] > killed_at + 2 and p["step"] > step_at_kill
                           for p in job_curve(survivor, "second")), 60, "steps of the survivor after the kill")
    cells = {c["name"]: c for c in fed.json("status")["cells"]}
    assert "error" in cells["c1"] and cells["c2"]["pools"][0]["ready"] == 1
    row = wait_until(lambda: (r := fed.jobs_by_cell()["c2"]["second"])["status"] in ("SUCCEEDED", "FAILED") and r,
                     240, "the survivor's job to end")
    assert row["status"] == "SUCCEEDED" and row["step"] == TRAINING["steps"]
