"""Monitoring a real local fleet: the controller's metrics at the head's Prometheus endpoint, its
decisions in its log as the dashboard serves it, `rayfleet dashboard`, tables at 80 columns.
Tests run in order on one fleet (scale down, then a node killed and replaced)."""
from __future__ import annotations

import json
import re
import signal
import urllib.parse
import urllib.request
from typing import Iterator

import pytest

from tests.support.fleet import Fleet, lines_at_80_columns, running_fleet
from tests.support.fleet_processes import node_raylet
from tests.support.prometheus import export_ports, scrape, value
from tests.support.specs import h100_pool
from tests.conftest import wait_until

pytestmark = pytest.mark.ray

FLEET = "t-mon"
POOLS = [h100_pool(cpus_per_node=1, memory="4Gi", min_nodes=1, max_nodes=3, nodes=2)]
EXPORT_WAIT_S = 90
"""Ray's workers push metrics to their node's agent every 10 s (`ray._raylet.Config.
metrics_report_interval_ms()` is 10000 in Ray 2.60) and the agent serves them on the next scrape;
on this loaded 2-core machine allow several rounds."""


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    yield from running_fleet(tmp_path_factory.mktemp("monitoring"), FLEET, POOLS)


def head_metrics(fleet: Fleet, **expected: float) -> list:
    """Scrape the head's endpoint until every `name=value` (labels fleet and pool=h100) holds."""
    port = export_ports(fleet)["head"]

    def matches() -> list | None:
        samples = scrape(port)
        ok = all(value(samples, f"ray_{name}", fleet=FLEET, pool="h100") == want for name, want in expected.items())
        return samples if ok else None
    return wait_until(matches, EXPORT_WAIT_S, f"head metrics {expected}", interval=1.0)


def dashboard_get(fleet: Fleet, path: str) -> bytes:
    """GET from the fleet's dashboard with its token, as an API client does."""
    url = fleet.head_record()["dashboard_url"]
    token = (fleet.dir / "auth_token").read_text().strip()
    request = urllib.request.Request(url + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return answer.read()


def controller_log(fleet: Fleet) -> str:
    query = urllib.parse.urlencode({"filter_keys": "name", "filter_predicates": "=",
                                    "filter_values": "rayfleet-controller"})
    actors = json.loads(dashboard_get(fleet, f"/api/v0/actors?{query}"))["data"]["result"]["result"]
    alive = [actor for actor in actors if actor["state"] == "ALIVE"]
    assert len(alive) == 1, actors
    path = f"/api/v0/logs/file?actor_id={alive[0]['actor_id']}&suffix=err&lines=-1"
    return dashboard_get(fleet, path).decode(errors="replace")  # Ray's own lines may hold raw bytes


def test_pool_gauges_and_counters_reach_the_head_prometheus_endpoint(fleet: Fleet) -> None:
    fleet.wait_ready()
    samples = head_metrics(fleet, rayfleet_pool_desired_nodes=2, rayfleet_pool_ready_nodes=2,
                           rayfleet_pool_ready_gpus=16, rayfleet_pool_desired_gpus=16)
    assert value(samples, "ray_rayfleet_pool_unhealthy_nodes", fleet=FLEET, pool="h100") == 0
    assert value(samples, "ray_rayfleet_pool_starting_nodes", fleet=FLEET, pool="h100") == 0
    assert value(samples, "ray_rayfleet_node_launches_total", fleet=FLEET, pool="h100", reason="spec_nodes") == 2
    assert value(samples, "ray_rayfleet_controller_events_total", fleet=FLEET, pool="h100", kind="joined") == 2
    loops = value(samples, "ray_rayfleet_reconcile_seconds_count", fleet=FLEET)
    took = value(samples, "ray_rayfleet_reconcile_seconds_sum", fleet=FLEET)
    assert loops and loops >= 2 and 0 < took / loops < 5.0


def test_dashboard_command_names_the_views_the_token_file_and_the_metrics_ports(fleet: Fleet) -> None:
    token = (fleet.dir / "auth_token").read_text().strip()
    result = fleet.cli("dashboard", "-o", "json", timeout=60)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    head = fleet.head_record()
    assert doc["url"] == head["dashboard_url"]
    assert doc["views"]["jobs"]["url"] == f"{head['dashboard_url']}/#/jobs"
    assert set(doc["views"]) >= {"jobs", "actors", "cluster", "metrics", "logs"}
    assert doc["auth"]["mode"] == "token" and doc["auth"]["token_accepted"] is True
    assert doc["auth"]["token_file"] == str(fleet.dir / "auth_token") and doc["auth"]["cookie"] == "ray-authentication-token"
    assert token not in result.stdout and "token" not in doc["auth"]
    ports = export_ports(fleet)
    heads = [t["target"] for t in doc["metrics"]["targets"] if t["head"]]
    assert len(heads) == 1 and heads[0].endswith(f":{ports['head']}")
    assert len(doc["metrics"]["targets"]) == len(ports)
    shown = fleet.cli("dashboard", "--show-token", timeout=60)
    assert shown.returncode == 0 and token in shown.stdout
    table = fleet.cli("dashboard", timeout=60).stdout
    assert token not in table and f"{head['dashboard_url']}/#/actors" in table and "--show-token" in table


def test_scaling_down_moves_the_gauges(fleet: Fleet) -> None:
    assert fleet.cli("scale", "h100", "--nodes", "1", "--wait", "--timeout", "120").returncode == 0
    samples = head_metrics(fleet, rayfleet_pool_desired_nodes=1, rayfleet_pool_ready_nodes=1,
                           rayfleet_pool_ready_gpus=8)
    assert value(samples, "ray_rayfleet_controller_events_total", fleet=FLEET, pool="h100", kind="scale") == 1


def test_a_killed_node_is_counted_as_a_replacement_for_liveness_and_logged(fleet: Fleet) -> None:
    victim = next(node["instance"] for node in fleet.status()["nodes"] if node["state"] == "ready")
    node_raylet(fleet, victim).send_signal(signal.SIGKILL)  # a raylet of the node this test's fleet started
    wait_until(lambda: any(e["kind"] == "replace" and e["instance"] == victim for e in fleet.events()), 60,
               f"{victim} replaced")
    port = export_ports(fleet)["head"]

    def counted() -> list | None:
        found = scrape(port)
        tags = {"fleet": FLEET, "pool": "h100", "cause": "liveness"}
        return found if (value(found, "ray_rayfleet_node_replacements_total", **tags) == 1
                         and value(found, "ray_rayfleet_remediations_total", action="replace", **tags) == 1) else None
    wait_until(counted, EXPORT_WAIT_S, "the replacement counted with cause liveness", interval=1.0)
    log = wait_until(lambda: (text := controller_log(fleet)) and f"replace: {victim} terminated for replacement" in text
                     and text, 60, "the replacement in the controller's log")
    assert f"lost: {victim} lost" in log and "INFO rayfleet.controller" in log
    fleet.wait_ready(timeout=180)
    lines = lines_at_80_columns(fleet, "events", "--kind", "replace")
    assert lines[0].split() == ["TIME", "KIND", "NODE", "MESSAGE", "REASON"]
    assert victim.removeprefix(f"{FLEET}-") in lines[1] and FLEET not in "\n".join(lines)
    # a list cut to the newest N says so, and how to see the rest
    cut = lines_at_80_columns(fleet, "events", "--limit", "1")
    said = re.fullmatch(r"the newest 1 of (\d+) events; `--limit (\d+)` shows them all", cut[-1].strip())
    assert said and said.group(1) == said.group(2) and int(said.group(1)) >= 2, cut
    lines_at_80_columns(fleet, "status")
