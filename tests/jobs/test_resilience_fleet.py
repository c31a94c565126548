"""Long runs kept productive, on a real local fleet through the CLI: a SIGSTOPped worker is found
hung, its stacks saved and the job resumed; a preemption notice loses no step; a job that cannot be
placed, a busy pool and a noticed node are explained; and under full CPU load a paused raylet and a
paused controller cost no node while a killed raylet is still caught within a second."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import psutil
import pytest

from rayfleet.cluster.head.processes import Owned, process_of
from rayfleet.cluster.rayio import gcs
from rayfleet.names import beat_key
from tests.support.fleet import Fleet, gcs_client, running_fleet
from tests.support.fleet_jobs import history, job_detail, jobs, started_events, submit, train_workers
from tests.support.fleet_processes import instance_of, node_raylet
from tests.support.specs import h100_pool, job_spec
from tests.conftest import wait_until

pytestmark = pytest.mark.ray

POOLS = [h100_pool(cpus_per_node=1, memory="8Gi", min_nodes=1, max_nodes=4, nodes=3, hot_spares=1,
                   max_unavailable=2)]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    yield from running_fleet(tmp_path_factory.mktemp("resilience"), "t-res", POOLS,
                             health={"max_replacements_per_hour": 20, "drain_deadline_s": 5})


def paced_job(name: str, workers: int = 2, steps: int = 60, **extra: Any) -> dict[str, Any]:
    """A job whose steps are padded to 0.3 s, checkpointing every 5 steps."""
    return job_spec(name, workers=workers, steps=steps, data={"seq_len": 64, "global_batch": 2 * workers},
                    checkpoint={"every": 5}, step_time_s=0.3, **extra)


def steps_done(fleet: Fleet, name: str) -> int:
    return max((e["step"] for e in history(fleet, name) if e["event"] == "step"), default=0)


def ended(fleet: Fleet, name: str, timeout: float = 400) -> dict[str, Any]:
    return wait_until(lambda: (doc := job_detail(fleet, name))["state"] in ("SUCCEEDED", "FAILED") and doc,
                      timeout, f"{name} to end")


def stop_right_after_its_beat(fleet: Fleet, job: str, rank: int, timeout: float = 20) -> psutil.Process:
    """SIGSTOP `rank` just after it published a beat, at a moment when the other rank's newest beat
    is older and will not be renewed before that rank blocks waiting (beats are at least 1 s apart).
    (Requiring the other's beat to be a whole step behind as well found no moment on a loaded CI
    machine: the ranks step in lock-step, their logging collectives included.)"""
    client = gcs_client(fleet)

    def beat(r: int) -> dict[str, Any]:
        return json.loads(gcs.kv_get(client, beat_key(job, r)) or b"{}")

    other = 1 - rank
    last = beat(rank).get("time")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        mine = beat(rank)
        if mine.get("time") != last:
            last, theirs = mine.get("time"), beat(other)
            # rank 0's beat the older by 0.1-0.6 s: it blocks within a step (0.3 s), before its next
            # beat is due (1 s after its last), so the oldest beat stays rank 0's
            if theirs.get("step", mine["step"]) <= mine["step"] and 0.1 < mine["time"] - theirs["time"] < 0.6:
                victim = psutil.Process(mine["pid"])
                victim.send_signal(signal.SIGSTOP)
                return victim
        time.sleep(0.01)  # the poll's period: a step takes 0.3 s
    # The two ranks' beats can fall in phase (both once a second from the same step) and stay so:
    # then there is no such moment, and the rank is stopped now; the evidence must still name it.
    victim = psutil.Process(beat(rank)["pid"])
    victim.send_signal(signal.SIGSTOP)
    return victim


def test_a_sigstopped_worker_is_found_hung_its_stacks_saved_and_the_job_resumes(fleet: Fleet) -> None:
    fleet.wait_ready(timeout=240)
    submit(fleet, paced_job("hung", steps=200, hang={"first_steps": 3, "margin_s": 10}))
    wait_until(lambda: steps_done(fleet, "hung") >= 12, 300, "hung past step 12")
    # once it trains, a warm standby process waits on each of the pool's three nodes (`rayfleet job`)
    wait_until(lambda: job_detail(fleet, "hung")["standbys"] >= 3, 120, "a warm standby on every node")
    # standbys import torch beside training (about 40 s on 2 busy cores): the hang must still find the job running
    assert steps_done(fleet, "hung") < 170, "the job ran nearly to its end before its standbys were up"
    # rank 1 is stopped right after it published a beat while rank 0's beat is older: the case in
    # which blaming the oldest beat names the wrong rank (rank 0 then waits for rank 1)
    stopped = stop_right_after_its_beat(fleet, "hung", rank=1)
    owned, victim_instance = Owned(stopped.pid, stopped.create_time()), instance_of(fleet, stopped)
    at = time.time()
    try:
        hang = wait_until(lambda: next((e for e in history(fleet, "hung") if e["event"] == "hang"), None), 120,
                          "the hang to be detected")
        # the controller kills the stuck rank; resumed before that, it would finish its step after the hang
        wait_until(lambda: process_of(owned) is None, 30, "the stuck rank killed")
    finally:
        if process_of(owned) is not None:  # the test failed: leave nothing stopped behind
            stopped.send_signal(signal.SIGCONT)
    median = 0.3  # step_time_s pads every step to 0.3 s; the bound is 3 x median + 10 s
    assert hang["time"] - at <= 3 * median * 1.5 + 10 + 3.0, hang  # + one beat period and one loop
    diagnostics = Path(hang["diagnostics"])
    stacks = sorted(diagnostics.glob("rank*-pid*.txt"))
    assert len(stacks) == 2 and any("train" in p.read_text() for p in stacks), [p.read_text()[:300] for p in stacks]
    assert f"pid{stopped.pid}" in " ".join(p.name for p in stacks)
    # the evidence names rank 1, and only its node is blamed
    assert hang["rank"] == 1 and hang["culprits"] == [1] and hang["collateral"] == [], hang
    record = json.loads((diagnostics / "hang.json").read_text())
    assert record["pid"] == stopped.pid and record["killed"] == [1]
    assert {f["kind"]: f["culprits"] for f in record["evidence"]}["process"] == [1], record["evidence"]
    events = [e for e in fleet.events() if e["kind"] == "hang"]
    assert events and "hung" in events[-1]["message"] and events[-1]["instance"] == victim_instance
    doc = ended(fleet, "hung")
    assert doc["state"] == "SUCCEEDED" and doc["final_step"] == 200
    started = started_events(fleet, "hung")
    assert len(started) >= 2 and started[-1]["from_step"] >= 10  # resumed from its checkpoint
    # the first attempt started cold; the restart found warm standby processes waiting (jobs/driver/warm.py)
    ran = [e for e in history(fleet, "hung") if e["event"] == "worker"]
    assert not ran[0]["standby"] and ran[-1]["standby"], ran
    # goodput: the parts add up to the wall time; the hang shows as detection, redone steps as rollback
    figures = doc["goodput"]
    assert abs(sum(figures["parts"].values()) - figures["wall_s"]) < 0.01 * figures["wall_s"]
    assert 0 < figures["ettr"] < 1 and figures["attempts"] >= 2
    by_hang = [f for f in figures["faults"] if f["reason"] == hang["reason"]]
    assert len(by_hang) == 1 and by_hang[0]["detection_s"] >= 10 and figures["parts"]["detection"] >= 10, (
        figures, [e for e in history(fleet, "hung") if e["event"] != "step"])
    table = fleet.cli("job", "hung")
    assert table.returncode == 0 and "ETTR" in table.stdout and "rollback" in table.stdout
    assert jobs(fleet)["hung"]["ettr"] == pytest.approx(figures["ettr"], abs=0.05)


def test_a_preemption_notice_checkpoints_replaces_the_node_and_loses_no_step(fleet: Fleet) -> None:
    fleet.wait_ready(timeout=240)
    submit(fleet, paced_job("noticed", steps=60))
    wait_until(lambda: steps_done(fleet, "noticed") >= 8, 300, "noticed past step 8")
    victim = instance_of(fleet, train_workers(fleet)[0])
    result = fleet.cli("chaos", "preempt", victim, "--in", "60")
    assert result.returncode == 0, result.stderr
    # the moment its driver records the end, `rayfleet jobs` says so (Ray's job API lags by seconds)
    wait_until(lambda: any(e["event"] == "finished" for e in history(fleet, "noticed")), 400, "noticed to end")
    assert jobs(fleet)["noticed"]["status"] == "SUCCEEDED"
    # and stopping it now stops nothing: its end stays SUCCEEDED, not a STOPPED written after it
    late = fleet.cli("stop", "noticed")
    assert late.returncode == 0 and "already ended: SUCCEEDED" in late.stdout, (late.stdout, late.stderr)
    doc = ended(fleet, "noticed")
    assert doc["state"] == "SUCCEEDED" and doc["final_step"] == 60
    assert doc["goodput"]["steps_redone"] == 0 and doc["goodput"]["parts"]["rollback"] == 0
    notice = next(e for e in history(fleet, "noticed") if e["event"] == "notice")
    started = started_events(fleet, "noticed")
    assert started[-1]["from_step"] == notice["step"]  # resumed exactly where it checkpointed for the notice
    # ... as soon as the node was ended, not when the 60 s notice ran out (Ray Train alone waits for it);
    # checkpoint, drain, end and restart take about 20 s on 2 busy cores
    assert started[-1]["time"] - notice["time"] < 45, (notice, started[-1])
    kinds = [e["kind"] for e in fleet.events() if e["instance"] == victim]
    assert "notice" in kinds and "replace" in kinds
    fleet.wait_ready(timeout=240)
    explained = fleet.cli("explain", victim)
    assert explained.returncode == 0 and "notice" in explained.stdout, explained.stdout


def test_explain_says_why_a_job_waits_and_why_the_pool_does_not_grow(fleet: Fleet) -> None:
    fleet.wait_ready(timeout=240)
    submit(fleet, paced_job("holder", workers=3, steps=400))   # every worker slot of the pool
    wait_until(lambda: steps_done(fleet, "holder") >= 1, 300, "holder running")
    submit(fleet, paced_job("waiter", workers=2, steps=10))
    answer = wait_until(lambda: (r := fleet.cli("explain", "waiter")).returncode == 0 and "pending:" in r.stdout
                        and r.stdout, 120, "waiter explained as pending")
    assert "could run on: h100" in answer and "autoscaling off" in answer, answer
    pool = fleet.cli("explain", "h100")
    assert pool.returncode == 0 and "autoscaling is off" in pool.stdout, pool.stdout
    assert fleet.cli("stop", "holder").returncode == 0
    assert ended(fleet, "waiter", timeout=400)["state"] == "SUCCEEDED"
    unknown = fleet.cli("explain", "no-such-thing")
    assert unknown.returncode == 2 and "not a pool" in unknown.stderr


@pytest.fixture
def load() -> Iterator[None]:
    """Every core busy (stress-ng, started here and stopped by its pid)."""
    binary = shutil.which("stress-ng")
    assert binary, "stress-ng is installed by `make test` (Makefile DEBS)"
    process = subprocess.Popen([binary, "--cpu", str(os.cpu_count()), "--timeout", "240s", "--quiet"],
                               start_new_session=True)
    try:
        yield
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def test_under_full_load_pauses_cost_no_node_and_a_kill_is_caught_within_a_second(fleet: Fleet, load: None) -> None:
    fleet.wait_ready(timeout=240)
    before = {e["time"] for e in fleet.events() if e["kind"] in ("lost", "replace", "launch")}
    nodes = fleet.ready_nodes()
    paused = node_raylet(fleet, nodes[0])
    controller = psutil.Process(fleet.status()["controller"]["pid"])
    paused.send_signal(signal.SIGSTOP)
    try:
        time.sleep(5)  # the fault itself: a raylet paused for 30 s, the controller paused for 5 s of it
        controller.send_signal(signal.SIGSTOP)
        time.sleep(5)
        controller.send_signal(signal.SIGCONT)
        time.sleep(20)
    finally:
        paused.send_signal(signal.SIGCONT)
        controller.send_signal(signal.SIGCONT)
    # 10 s more under load: the paused node answers again and nothing was declared failed
    wait_until(lambda: fleet.node_state(nodes[0]) == "ready", 30, f"{nodes[0]} ready again")
    time.sleep(10)  # the fault's aftermath: anything declared now would still count against us
    after = [e for e in fleet.events() if e["kind"] in ("lost", "replace", "launch") and e["time"] not in before]
    assert after == [], after
    assert fleet.pools()["h100"]["ready"] == 3
    victim = node_raylet(fleet, nodes[1])
    killed_at = time.time()
    victim.send_signal(signal.SIGKILL)
    lost = wait_until(lambda: next((e for e in fleet.events() if e["kind"] == "lost" and e["instance"] == nodes[1]),
                                   None), 30, f"{nodes[1]} declared lost")
    assert lost["time"] - killed_at <= 1.0, lost
