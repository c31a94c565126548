"""Head fault tolerance with real Ray and a real Redis: a lost head costs no worker node, no job
and no history; without fault tolerance the loss is reported clearly and `down` cleans up."""
from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import psutil
import pytest

from tests.support.fleet import Fleet, gcs_client, running_fleet, supervisor
from tests.support.fleet_jobs import ENDED, job_curve, job_file, started_events, submit, wait_for_job
from tests.support.fleet_processes import kill_tree, node_running, raylets, supervisors
from tests.support.specs import h100_pool, job_spec
from tests.conftest import RAYFLEET, ROOT, rayfleet_env, wait_until

pytestmark = pytest.mark.ray

POOLS = [h100_pool(cpus_per_node=1, memory="8Gi", min_nodes=1, max_nodes=4, nodes=3)]
TRAINING = {"workers": 2, "data": {"seq_len": 128, "global_batch": 8}, "checkpoint": {"every": 10}}


PLANTED = "planted-secret-7f3a9c1e"
"""In the environment of every command of this module, as a cloud key would be in a user's shell."""


@pytest.fixture(scope="module")
def ft(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_SECRET_ACCESS_KEY", PLANTED)
        yield from running_fleet(tmp_path_factory.mktemp("ft"), "t-ft", POOLS,
                                 head={"cpus": 1, "fault_tolerance": {"enabled": True}})


def finished(fleet: Fleet, name: str, timeout: float = 400) -> dict[str, Any]:
    """The job's row once it ended, read while the head may be restarting (a failed read is retried)."""
    return wait_for_job(fleet, name, ENDED, timeout, every=True)


def test_killing_every_head_process_costs_no_node_no_job_and_no_controller_state(ft: Fleet) -> None:
    ft.wait_ready()
    submit(ft, job_spec("through", steps=500, **TRAINING))
    wait_until(lambda: len(job_curve(ft, "through")) >= 30, 300, "30 steps of the job")
    nodes_before = {n["instance"]: n["node_id"] for n in ft.status()["nodes"]}
    raylets_before = raylets(ft)
    controller_before = ft.status()["controller"]["pid"]
    launches_before = sum(e["kind"] == "launch" for e in ft.events())
    head = ft.head_record()
    killed = time.time()
    kill_tree(head["pid"])
    wait_until(lambda: supervisor(ft)["head"]["restarts"] >= 1 and ft.status()["controller"]["pid"] != controller_before,
               180, "the head and the controller to come back")
    back = time.time() - killed
    status = ft.status()
    assert {n["instance"]: n["node_id"] for n in status["nodes"]} == nodes_before  # the same Ray nodes
    assert raylets(ft) == raylets_before  # the same raylet processes: reconnected, not relaunched
    assert sum(e["kind"] == "launch" for e in ft.events()) == launches_before
    assert status["head"]["restarts"] >= 1 and "fault tolerance kept the cluster" in status["head"]["message"]
    row = finished(ft, "through")
    assert row["status"] == "SUCCEEDED" and row["step"] == 500 and row["restarts"] == 0
    points = job_curve(ft, "through")
    assert {p["restarts"] for p in points} == {0}  # the same workers trained straight through
    gap = max(b["time"] - a["time"] for a, b in zip(points, points[1:]))
    assert gap < back + 10, (gap, back)


def test_a_job_submitted_while_the_head_restarts_waits_for_it_and_runs(ft: Fleet) -> None:
    """A user's command given during a head failover waits for the head the supervisor is bringing
    back, instead of failing on a GCS or job API that is not up yet. The supervisor is held stopped
    while the head is down, so the command surely meets a head that is not back yet."""
    ft.wait_ready(timeout=240)
    restarts = supervisor(ft)["head"]["restarts"]
    path = job_file(ft, job_spec("during-failover", workers=1, steps=20, data={"seq_len": 64, "global_batch": 4}))
    held = psutil.Process(supervisors(ft)[0])
    err = ft.home.parent / "during-failover.err"
    proc = None
    held.send_signal(signal.SIGSTOP)
    try:
        kill_tree(ft.head_record()["pid"])
        with open(err, "w") as sink:
            proc = subprocess.Popen([RAYFLEET, "submit", "-f", str(path)], stdout=subprocess.PIPE, stderr=sink,
                                      text=True, env=rayfleet_env(ft.home), cwd=ROOT)
        wait_until(lambda: "the head is starting; waiting up to" in err.read_text(), 120, "submit to wait for the head")
        assert proc.poll() is None  # still waiting, not failed
        held.send_signal(signal.SIGCONT)
        out, _ = proc.communicate(timeout=240)
    finally:
        held.send_signal(signal.SIGCONT)
        if proc is not None and proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, (err.read_text(), supervisor(ft))
    assert out.startswith("submitted during-failover as "), out
    assert supervisor(ft)["head"]["restarts"] > restarts
    row = finished(ft, "during-failover")
    assert row["status"] == "SUCCEEDED" and row["step"] == 20


def test_a_killed_redis_is_reported_brought_back_and_the_job_still_finishes(ft: Fleet) -> None:
    ft.wait_ready(timeout=240)
    submit(ft, job_spec("through-redis", steps=300, **TRAINING))
    wait_until(lambda: len(job_curve(ft, "through-redis")) >= 20, 300, "20 steps of the job")
    redis_pid = supervisor(ft)["redis"]["owned"]["pid"]
    head_restarts = supervisor(ft)["head"]["restarts"]
    psutil.Process(redis_pid).send_signal(signal.SIGKILL)
    wait_until(lambda: supervisor(ft)["redis"]["restarts"] >= 1 and supervisor(ft)["redis"]["alive"], 60,
               "the supervisor to restart Redis")
    # The GCS exits when its Redis connection breaks (Ray's Redis failure detector), and the head
    # comes back against the restarted Redis: seconds later, or longer on a loaded machine.
    wait_until(lambda: supervisor(ft)["head"]["restarts"] > head_restarts, 180, "the head to restart against Redis")
    kinds = [e["kind"] for e in supervisor(ft)["events"]]
    assert "redis-lost" in kinds and "redis-restarted" in kinds
    status = wait_until(lambda: ft.cli("status", "-o", "json").returncode == 0 and ft.status(), 180,
                        "the fleet to answer again")
    assert "Redis was restarted" in status["head"]["message"]
    row = finished(ft, "through-redis")
    assert row["status"] == "SUCCEEDED" and row["step"] == 300


def test_a_job_whose_driver_node_is_lost_is_resubmitted_and_finishes(ft: Fleet) -> None:
    ft.wait_ready(timeout=240)
    first = submit(ft, job_spec("orphaned", steps=300, **TRAINING))
    wait_until(lambda: any(Path(p).name.startswith("rayfleet-step-") for p in
                           ft.job_dir("orphaned").glob("runs/*/rayfleet-step-*")), 300,
               "a first checkpoint")
    node = node_running(ft, "JobSupervisor")  # the node of the job's driver
    assert ft.cli("chaos", "kill-node", node).returncode == 0
    wait_until(lambda: any(e["kind"] == "resubmit" for e in ft.events()), 120, "the controller to resubmit")
    row = finished(ft, "orphaned", timeout=500)
    assert row["status"] == "SUCCEEDED" and row["step"] == 300
    assert row["submission_id"] != first and row["restarts"] >= 1
    starts = started_events(ft, "orphaned")
    assert starts[-1]["from_step"] >= 10  # continued from its checkpoint


def test_no_secret_is_on_disk_in_a_log_in_the_gcs_or_in_a_job_history(ft: Fleet) -> None:
    """The Redis password and a secret of the shell that ran `up` (PLANTED) appear in no log, no
    file of the fleet's folder (which only its owner may enter), no job history and no GCS KV
    entry; the files that hold a secret on purpose are the owner's alone."""
    from rayfleet.cluster.rayio import gcs
    from rayfleet.cluster.head.fleetdir import FleetDir

    ft.wait_ready(timeout=240)  # an earlier test's head failover is over
    password_file = ft.dir / "redis_password"
    password = password_file.read_text().strip()
    for private in (password_file, ft.dir / "auth_token", ft.dir / "supervisor-config.json", ft.dir / "runtime.json"):
        assert oct(private.stat().st_mode & 0o777) == "0o600", private
    for folder in (ft.home, ft.home / "fleets", ft.dir, FleetDir(ft.name, ft.home).temp_root):
        assert oct(folder.stat().st_mode & 0o777) == "0o700", folder
    ray_logs = FleetDir(ft.name, ft.home).temp_root / "head" / "session_latest" / "logs"
    files = [*(ft.dir / "logs").rglob("*"), *ray_logs.rglob("*"), *ft.dir.glob("*.json"),
             *(ft.dir / "storage").rglob("*.jsonl")]
    texts = {p: p.read_text(errors="replace") for p in files if p.is_file()}
    assert len(texts) > 10 and any(p.name == "history.jsonl" for p in texts)
    for secret in (password, PLANTED):
        assert [p for p, text in texts.items() if secret in text] == []
    client = gcs_client(ft)
    for key in gcs.kv_keys(client, ""):
        value = gcs.kv_get(client, key) or b""
        assert password.encode() not in value and PLANTED.encode() not in value, key
