"""The walking skeleton against real Ray processes: up, status, scale, node loss, controller
restart, and down, driven through the CLI as a user does. Tests run in order on one fleet."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Iterator

import pytest

from rayfleet.cluster.rayio import gcs
from tests.support.fleet import Fleet, gcs_client, running_fleet
from tests.support.fleet_processes import raylets
from tests.support.specs import h100_pool
from tests.conftest import ROOT, ray_daemon_pids, rayfleet_env, wait_until

pytestmark = pytest.mark.ray

POOLS = [
    h100_pool(cpus_per_node=1, memory="8Gi", min_nodes=1, max_nodes=3, nodes=2, labels={"team": "research"}),
    {"name": "a100", "accelerator": "A100", "gpus_per_node": 4, "cpus_per_node": 1, "memory": "8Gi",
     "min_nodes": 0, "max_nodes": 2, "nodes": 1},
]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    yield from running_fleet(tmp_path_factory.mktemp("local"), "t-local", POOLS)


def ray_nodes(fleet: Fleet) -> list:
    return [node for node in gcs.read_nodes(gcs_client(fleet)) if node.alive]


def test_up_brings_both_pools_to_size_as_labelled_ray_nodes(fleet: Fleet) -> None:
    status = fleet.wait_ready()
    pools = {p["name"]: p for p in status["pools"]}
    assert (pools["h100"]["ready"], pools["a100"]["ready"]) == (2, 1)
    assert (pools["h100"]["min"], pools["h100"]["max"]) == (1, 3)
    workers = [n for n in ray_nodes(fleet) if not n.is_head]
    assert sorted(n.pool for n in workers) == ["a100", "h100", "h100"]
    by_instance = {n.instance: n for n in workers}
    for node in status["nodes"]:
        ray = by_instance[node["instance"]]
        assert ray.node_id == node["node_id"] and node["state"] == "ready"
        assert ray.resources["GPU"] == {"h100": 8, "a100": 4}[node["pool"]]
    assert all(n.labels.get("team") == "research" for n in workers if n.pool == "h100")
    assert len(raylets(fleet)) == 3


def test_up_again_is_harmless(fleet: Fleet) -> None:
    before = raylets(fleet)
    result = fleet.cli("up", "-f", str(fleet.spec_path))
    assert result.returncode == 0, result.stderr
    assert "already up" in result.stdout
    assert raylets(fleet) == before


# A command's driver while Ray broadcasts an error to every driver (as it does when any node of the
# cluster is marked dead): the message must reach stderr, never the command's JSON on stdout.
DRIVER_DURING_A_CLUSTER_ERROR = """
import json, sys, time
import ray
from rayfleet.cluster.rayio.connection import connect, ray_driver
from ray._private.utils import publish_error_to_driver

seen = []
class Remembering:
    def __init__(self, stream): self.stream = stream
    def write(self, text): seen.append(text); return self.stream.write(text)
    def __getattr__(self, name): return getattr(self.stream, name)
sys.stderr = Remembering(sys.stderr)
with ray_driver(connect().gcs_address):
    # the driver's error subscription may start after ray.init returns: publish until it is seen
    deadline, published = time.monotonic() + 60, 0.0
    while not any("marked dead" in text for text in seen) and time.monotonic() < deadline:
        if time.monotonic() - published > 2:
            publish_error_to_driver("rayfleet_test", "node n-1 has been marked dead",
                                    ray._private.worker.global_worker.gcs_client)
            published = time.monotonic()
        time.sleep(0.05)
print(json.dumps({"result": "only this"}))
"""


def test_ray_cluster_errors_go_to_stderr_and_leave_json_output_alone(fleet: Fleet) -> None:
    result = subprocess.run([sys.executable, "-c", DRIVER_DURING_A_CLUSTER_ERROR], capture_output=True, text=True,
                            timeout=120, env=rayfleet_env(fleet.home), cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"result": "only this"}
    assert "has been marked dead" in result.stderr


def test_scale_up_and_down_is_reflected_in_status(fleet: Fleet) -> None:
    assert fleet.cli("scale", "h100", "--nodes", "3", "--wait").returncode == 0
    status = fleet.wait_ready()
    assert {p["name"]: p["ready"] for p in status["pools"]}["h100"] == 3
    assert len(raylets(fleet)) == 4
    assert fleet.cli("scale", "h100", "--nodes", "1").returncode == 0
    wait_until(lambda: fleet.pools()["h100"]["ready"] == 1 and len(raylets(fleet)) == 2, 120,
               "h100 scaled down to 1 node and its raylets gone")
    scale_events = [e for e in fleet.events() if e["kind"] == "scale"]
    assert len(scale_events) == 2 and all(e["reason"] == "scale down to 1" for e in scale_events)
    assert fleet.cli("scale", "h100", "--nodes", "2", "--wait").returncode == 0


def test_scale_rejects_unknown_pools_and_out_of_range_targets(fleet: Fleet) -> None:
    unknown = fleet.cli("scale", "nope", "--nodes", "1")
    assert unknown.returncode == 2 and "pools: h100, a100" in unknown.stderr
    too_many = fleet.cli("scale", "a100", "--nodes", "3")
    assert too_many.returncode == 2 and "0..2" in too_many.stderr
    assert fleet.pools()["a100"]["desired"] == 1


def test_sigkilled_raylet_is_replaced_and_the_pool_returns_to_size(fleet: Fleet) -> None:
    fleet.wait_ready()
    pids = raylets(fleet)
    victim = sorted(name for name in pids if "-h100-" in name)[0]
    os.kill(pids[victim], signal.SIGKILL)
    killed_at = time.time()
    status = wait_until(lambda: (s := fleet.status()) and victim not in {n["instance"] for n in s["nodes"]}
                        and {p["name"]: p["ready"] for p in s["pools"]}["h100"] == 2 and s, 180,
                        f"replacement of {victim}")
    lost = [e for e in fleet.events() if e["kind"] == "lost" and e["instance"] == victim]
    assert lost and "raylet" in lost[0]["message"]
    assert lost[0]["time"] - killed_at < 5.0  # noticed through the provider, not Ray's ~15 s timeout
    assert len(raylets(fleet)) == 3
    assert all(n["state"] == "ready" for n in status["nodes"])


def test_killed_controller_restarts_with_its_state_and_launches_nothing(fleet: Fleet) -> None:
    fleet.wait_ready()
    before = fleet.status()
    raylets_before = raylets(fleet)
    launches = sum(e["kind"] == "launch" for e in fleet.events())
    old_pid = before["controller"]["pid"]
    os.kill(old_pid, signal.SIGKILL)
    after = wait_until(lambda: (s := fleet.status())["controller"]["pid"] != old_pid
                       and s["controller"]["loops"] >= 3 and s, 120, "the controller to restart")
    assert {n["instance"] for n in after["nodes"]} == {n["instance"] for n in before["nodes"]}
    assert raylets(fleet) == raylets_before
    events = fleet.events()
    assert sum(e["kind"] == "launch" for e in events) == launches
    assert not any(e["kind"] == "adopt" for e in events)  # resumed from its stored state


def test_down_stops_every_process_of_the_fleet(fleet: Fleet) -> None:
    ours = fleet.owned_processes()
    assert ours and ray_daemon_pids(fleet.home)
    result = fleet.cli("down")
    assert result.returncode == 0, result.stderr
    assert not any(p.alive() for p in ours)
    assert ray_daemon_pids(fleet.home) == set()
    assert not (fleet.dir / "head.json").exists()
    gone = fleet.cli("status")
    assert gone.returncode != 0 and "up -f" in gone.stderr
    assert fleet.cli("down").returncode == 2  # no current fleet: says so, changes nothing
