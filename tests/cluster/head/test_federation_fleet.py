"""A fleet of two cells on this machine, each its own Ray cluster (a head and one 1-CPU node):
`rayfleet up` starts both and the federation's mover, one `rayfleet submit` per job places the
jobs on different cells, `status` and `jobs` show both cells, and a cell whose head is SIGKILLed
(fault tolerance off) costs the other cell's job nothing: it keeps training and finishes. The lost
cell's job, once the policy's wait is over and the surviving cell has room, is moved there by the
mover, resumes from its newest checkpoint and finishes; `explain` and `events` say why it moved.
`health`, `scale`, `chaos` and `dashboard` given the federation reach every cell (or the node's)."""
from __future__ import annotations

import json
import time
from typing import Iterator

import pytest
import yaml

from rayfleet.jobs.supervision import history
from tests.conftest import wait_until
from tests.support.federation import Federation, running_federation
from tests.support.fleet import Fleet
from tests.support.fleet_jobs import job_curve
from tests.support.fleet_processes import kill_tree
from tests.support.specs import h100_pool, job_spec

pytestmark = pytest.mark.ray

POOLS = [h100_pool(cpus_per_node=1, memory="8Gi", min_nodes=2, max_nodes=2, nodes=2)]
TRAINING = {"workers": 1, "steps": 120, "data": {"seq_len": 64, "global_batch": 4}}
# Long enough to still train when the second job has started on the other cell (a step takes about
# 0.13 s here, a job's start 30 to 45 s: the kill came at step 144 of the first job in one run),
# with a checkpoint every 50 steps to resume from.
FIRST = {**TRAINING, "steps": 600, "checkpoint": {"every": 50}}
WAIT_S = 5.0  # federation.head_lost_wait_s: the mover moves a lost cell's jobs this long after the loss


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    # max_nodes_per_cell 1 cuts pool h100 into two cells (c1, c2) of one node each
    yield from running_federation(tmp_path_factory.mktemp("cells"), "fed", POOLS, max_nodes_per_cell=1,
                                  federation={"head_lost_wait_s": WAIT_S})


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
    mover = fed.mover()
    assert mover is not None
    assert [cell.job_dir("j").parent for cell in fed.cells()] == [fed.home / "fleets" / "fed" / "storage" / "jobs"] * 2
    again = fed.cli("up", "-f", str(fed.spec_path), timeout=300)  # repeated: both cells and the mover adopted
    assert again.returncode == 0 and again.stdout.count("is already up") == 2, again.stdout + again.stderr
    assert [cell.head_record()["pid"] for cell in fed.cells()] == [h["pid"] for h in heads]
    assert fed.mover() == mover


def test_health_scale_chaos_and_metrics_reach_every_cell(fed: Federation) -> None:
    health = wait_until(lambda: (doc := fed.json("health")) and all("nodes" in c for c in doc["cells"]) and doc,
                        60, "both cells' health documents")
    nodes = {c["name"]: [n["instance"] for n in c["nodes"]] for c in health["cells"]}
    assert nodes == {"c1": ["fed-c1-h100-0001"], "c2": ["fed-c2-h100-0001"]}, nodes
    scaled = fed.cli("scale", "h100", "--nodes", "2", timeout=120)  # the pool's 2 nodes: one per cell, as now
    assert scaled.returncode == 0, scaled.stdout + scaled.stderr
    assert "desired 2 -> 2 in cells c1, c2 (c1 1 -> 1, c2 1 -> 1)" in " ".join(scaled.stdout.split())
    beyond = fed.cli("scale", "h100", "--nodes", "3", timeout=120)
    assert beyond.returncode == 2 and "min_nodes..max_nodes 2..2 in all" in beyond.stderr, beyond.stderr
    injected = fed.json("chaos", "inject", "fed-c2-h100-0001", "--fault", "clear")  # reaches c2's agent
    assert injected["node"] == "fed-c2-h100-0001" and injected["checks"] == []
    dashboard = fed.json("dashboard")
    assert [(c["name"], c["fleet"]) for c in dashboard["cells"]] == [("c1", "fed-c1"), ("c2", "fed-c2")]
    targets_file = dashboard["metrics"]["service_discovery_file"]
    expected = [{"targets": [t["target"] for t in c["metrics"]["targets"]], "labels": {"federation": "fed", "cell": c["name"]}}
                for c in dashboard["cells"]]
    wait_until(lambda: json.loads(open(targets_file).read()) == expected, 30,
               "the mover to write both cells' Prometheus targets")


def test_jobs_land_on_different_cells_and_a_lost_cell_costs_the_other_nothing(fed: Federation) -> None:
    for name, training in (("first", FIRST), ("second", TRAINING)):
        path = fed.home.parent / f"{name}.yaml"
        path.write_text(yaml.safe_dump(job_spec(name, **training)))
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
    storage = lost.job_dir("first").parent.parent
    wait_until(lambda: committed(lost, "first") and len(job_curve(survivor, "second")) >= 3, 180,
               "a committed checkpoint of the first job, and the second training")
    kill_tree(lost.head_record()["pid"])  # fault tolerance is off: cell c1's cluster is gone
    killed_at = time.time()
    newest_before_kill = committed(lost, "first")[-1]
    assert newest_before_kill > 0 and history.summary(storage, "first")["state"] == "RUNNING"
    step_at_kill = job_curve(survivor, "second")[-1]["step"]
    wait_until(lambda: any(p["time"] > killed_at + 2 and p["step"] > step_at_kill
                           for p in job_curve(survivor, "second")), 60, "steps of the survivor after the kill")
    cells = {c["name"]: c for c in fed.json("status")["cells"]}
    assert "error" in cells["c1"] and cells["c2"]["pools"][0]["ready"] == 1
    row = wait_until(lambda: (r := fed.jobs_by_cell()["c2"]["second"])["status"] in ("SUCCEEDED", "FAILED") and r,
                     240, "the survivor's job to end")
    assert row["status"] == "SUCCEEDED" and row["step"] == TRAINING["steps"]

    # the mover: after WAIT_S, and once the lost cell's job stopped stepping and c2 has room (the
    # second job held its only node), the first job goes to c2 and resumes from its checkpoint
    moved = wait_until(lambda: next((p for p in fed.placements() if p["job"] == "first" and p.get("moved_from")), None),
                       WAIT_S + 120, "the mover to move the first job to c2")
    assert (moved["cell"], moved["moved_from"]["cell"]) == ("c2", "c1")
    assert "c1's head (without fault tolerance)" in moved["why"] and f"the {WAIT_S:.0f} s the policy waits" in moved["why"]
    assert moved["at"] - killed_at >= WAIT_S
    first = wait_until(lambda: (r := fed.jobs_by_cell()["c2"].get("first")) and r["status"] in ("SUCCEEDED", "FAILED")
                       and r, 400, "the moved job to end on c2")
    assert first["status"] == "SUCCEEDED" and first["step"] == FIRST["steps"], first
    started = [e for e in history.events(storage, "first")
               if e["event"] == "started" and e["submission_id"] == moved["submission_id"]]
    assert started and started[0]["from_step"] >= newest_before_kill > 0, started
    submissions = [e for e in history.events(storage, "first") if e["event"] == "submitted"]
    assert [e["fleet"] for e in submissions] == ["fed-c1", "fed-c2"]  # moved once, never resubmitted beside it
    curve = job_curve(survivor, "first")
    orphan = [p for p in curve if p["submission_id"] == moved["moved_from"]["submission_id"]]
    resumed = [p for p in curve if p["submission_id"] == moved["submission_id"]]
    print(f"\nc1's head killed at step {orphan_step(orphan, killed_at)} of first; its workers on c1 logged steps "
          f"until {orphan[-1]['time'] - killed_at:.1f} s after (step {orphan[-1]['step']}); moved after "
          f"{moved['at'] - killed_at:.1f} s; first step on c2 after {resumed[0]['time'] - killed_at:.1f} s, "
          f"from step {started[0]['from_step']}")

    explained = fed.cli("explain", "first", timeout=120)
    words = " ".join(explained.stdout.split())
    assert explained.returncode == 0 and "moved from cell c1" in words and "to cell c2" in words, words
    assert f"over the {WAIT_S:.0f} s the policy waits" in words
    followed = fed.json("job", "first")  # reaches the cell the job moved to
    assert followed["submission_id"] == moved["submission_id"] and followed["state"] == "SUCCEEDED", followed
    events = fed.json("events", "--kind", "move")
    assert [(e["kind"], e["reason"]) for e in events] == [("move", moved["why"])]


def orphan_step(points: list[dict], at: float) -> int:
    return max((p["step"] for p in points if p["time"] <= at), default=0)


def committed(cell: Fleet, job: str) -> list[int]:
    """The steps of the job's committed checkpoints, oldest first (what a new submission resumes from)."""
    from rayfleet.jobs.worker.checkpoint import checkpoint_dirs, read_meta

    return [int(read_meta(path)["step"]) for path in checkpoint_dirs(cell.job_dir(job))]
