"""Health on a real local fleet, through the CLI: an XID under a training job quarantines the node
(released only once its checks pass), a hard node kill, a slow node named a straggler and
quarantined after a failed burn, and a flapping check that causes no replacement storm."""
from __future__ import annotations

import json
import time
from typing import Any, Iterator

import pytest

from tests.support.fleet import Fleet, running_fleet
from tests.support.fleet_jobs import started_events, submit, wait_for_job
from tests.support.fleet_processes import node_running
from tests.support.specs import h100_pool, job_spec
from tests.conftest import wait_until

pytestmark = pytest.mark.ray

POOLS = [h100_pool(cpus_per_node=1, memory="8Gi", min_nodes=1, max_nodes=6, nodes=3, hot_spares=1,
                   max_unavailable=2)]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    # straggler_fraction 0.3, not the default 0.7: these links are loopback sockets among 4 nodes on
    # 2 busy cores, where a healthy link measured anywhere from 0.5 to 4 GB/s (one CI run flagged a
    # healthy one below 0.7 x the median); the throttled link runs at 30 MB/s either way.
    yield from running_fleet(tmp_path_factory.mktemp("health"), "t-health", POOLS,
                             health={"max_replacements_per_hour": 2, "drain_deadline_s": 5,
                                     "straggler_fraction": 0.3})


def health(fleet: Fleet) -> dict[str, dict[str, Any]]:
    result = fleet.cli("health", "-o", "json", timeout=60)
    assert result.returncode == 0, result.stderr
    return {node["instance"]: node for node in json.loads(result.stdout)["nodes"]}


def test_every_node_is_checked_and_spares_wait_unadmitted(fleet: Fleet) -> None:
    fleet.wait_ready()
    nodes = health(fleet)
    assert len(nodes) == 4 and all(n["heartbeat_age_s"] is not None and n["heartbeat_age_s"] < 3 for n in nodes.values())
    assert all({c["name"] for c in n["checks"]} >= {"gpu.xid", "gpu.ecc", "burn", "disk"} for n in nodes.values())
    spares = [n for n in nodes.values() if n["spare"]]
    assert len(spares) == 1 and not spares[0]["admitted"]


def test_xid_under_a_training_job_quarantines_the_node_a_spare_takes_over_and_the_job_finishes(fleet: Fleet) -> None:
    submit(fleet, job_spec("xid-job", workers=2, steps=150, data={"seq_len": 128, "global_batch": 8},
                           checkpoint={"every": 10}))
    progress = fleet.job_dir("xid-job")
    wait_until(lambda: any(progress.glob("runs/*/rayfleet-step-00000020/COMMITTED")), 300, "a checkpoint at step 20")
    victim = node_running(fleet, "RayTrainWorker")
    spare = next(n["instance"] for n in fleet.status()["nodes"] if n["spare"])
    injected = fleet.cli("chaos", "inject", victim, "--fault", "xid")
    assert injected.returncode == 0 and "XID 79" in injected.stdout
    final = wait_for_job(fleet, "xid-job", ("SUCCEEDED", "FAILED"), timeout=400)
    assert final["status"] == "SUCCEEDED" and final["step"] == 150
    events = [e for e in fleet.events() if e["instance"] in (victim, spare)]
    kinds = [e["kind"] for e in events]
    assert kinds.index("unhealthy") < kinds.index("quarantine") and "promote" in kinds, kinds
    started = started_events(fleet, "xid-job")
    assert len(started) >= 2 and started[-1]["from_step"] >= 20  # resumed from its checkpoint
    fleet.wait_ready(timeout=240)  # 3 pool nodes and a fresh spare, the quarantined node kept aside
    assert fleet.node_state(victim) == "quarantined"
    listed = fleet.cli("quarantine", "list", "-o", "json")
    assert listed.returncode == 0 and victim in listed.stdout
    shown = fleet.cli("quarantine", "show", victim)
    assert shown.returncode == 0 and "XID 79" in shown.stdout
    # release: refused while the XID is still reported, granted once the checks pass
    assert fleet.cli("quarantine", "release", victim).returncode == 0
    wait_until(lambda: any(e["kind"] == "release-refused" and e["instance"] == victim for e in fleet.events()), 60,
               f"{victim}'s release refused while its XID persists")
    assert fleet.node_state(victim) == "quarantined"
    assert fleet.cli("chaos", "inject", victim, "--fault", "clear").returncode == 0  # the request stands
    wait_until(lambda: any(e["kind"] == "release" and e["instance"] == victim for e in fleet.events()), 60,
               f"{victim} released once its checks passed")
    wait_until(lambda: fleet.node_state(victim) in ("ready", "draining", "terminating", None), 60,
               f"{victim} out of quarantine")


def test_a_hard_killed_node_is_noticed_within_3_seconds_and_replaced(fleet: Fleet) -> None:
    fleet.wait_ready(timeout=240)
    victim = fleet.ready_nodes()[0]
    before = time.time()
    assert fleet.cli("chaos", "kill-node", victim).returncode == 0
    lost = wait_until(lambda: next((e for e in fleet.events() if e["kind"] == "lost" and e["instance"] == victim),
                                   None), 30, f"{victim} to be declared lost")
    assert lost["time"] - before < 3.0, lost
    fleet.wait_ready(timeout=240)


def test_a_slow_node_is_named_a_straggler_and_a_burn_then_fails_it(fleet: Fleet) -> None:
    fleet.wait_ready(timeout=240)
    victim = fleet.ready_nodes()[-1]
    assert fleet.cli("chaos", "inject", victim, "--fault", "slow").returncode == 0
    result = fleet.cli("health", "--link", "h100", "-o", "json", timeout=300)
    assert result.returncode == 0, result.stderr
    ring = json.loads(result.stdout)
    assert ring["sum_ok"] and ring["stragglers"] == [victim], ring
    wait_until(lambda: health(fleet)[victim]["state"] == "degraded", 30, f"{victim} degraded (straggler)")
    burn = fleet.cli("health", "--burn", victim, "-o", "json", timeout=120)
    assert json.loads(burn.stdout)["burn"]["status"] == "fail"
    wait_until(lambda: any(e["kind"] == "quarantine" and e["instance"] == victim for e in fleet.events()), 30,
               f"{victim} quarantined after its failed burn (a hardware check)")


def test_a_flapping_check_is_not_a_replacement_storm(fleet: Fleet) -> None:
    fleet.wait_ready(timeout=240)
    launches = sum(e["kind"] == "launch" for e in fleet.events())
    target = fleet.ready_nodes()[0]
    for flip in range(6):  # thermal throttling comes and goes: degraded, never replaced
        assert fleet.cli("chaos", "inject", target, "--fault", "thermal" if flip % 2 == 0 else "clear").returncode == 0
    wait_until(lambda: health(fleet)[target]["state"] == "ready", 30, f"{target} ready again")
    nodes = fleet.ready_nodes()
    for node in nodes:  # XIDs everywhere: the rate limit (2 per hour, both used above) holds them all
        assert fleet.cli("chaos", "inject", node, "--fault", "xid").returncode == 0
    wait_until(lambda: sum(e["kind"] == "held" for e in fleet.events()) >= len(nodes), 30, "every node held")
    assert sum(e["kind"] == "launch" for e in fleet.events()) == launches
    assert all(n["state"] == "unhealthy" and "max_replacements_per_hour" in n["reason"]
               for n in fleet.status()["nodes"] if n["instance"] in nodes)
