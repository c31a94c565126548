"""The fleet simulator: determinism, exact fast-forward, failure processes at their published
rates, and the training job whose lost progress goodput measures."""
from __future__ import annotations

import dataclasses
import math

import pytest

from rayfleet.cluster.decide.plan import Launch, Terminate
from rayfleet.cluster.sim.simulator import (LLAMA3_NODE_HOURS, FailureRates, JobState, SimulatedCloud, SimulatedController,
                              SimulatedJob, llama3_rates, spot_rate)
from rayfleet.cluster.spec.fleet import FleetSpec
from rayfleet.cluster.decide.state import NodeState
from tests.support.specs import fleet_spec, h100_pool

S = NodeState


def spec(nodes: int = 8, spares: int = 0, period: float = 5, **pool: object) -> FleetSpec:
    return fleet_spec(h100_pool(max_nodes=nodes * 2, nodes=nodes, hot_spares=spares, **pool), name="s",
                      scaling={"loop_period_s": period, "boot_timeout_s": 900})


def controller(spec: FleetSpec, failures: FailureRates = FailureRates(), seed: int = 3,
               boot_s: float = 120) -> SimulatedController:
    return SimulatedController(spec, SimulatedCloud(boot_s=boot_s, boot_jitter_s=30, seed=seed, failures=failures))


def outcome(c: SimulatedController) -> tuple:
    events = [(e.time, e.kind, e.instance, e.reason) for e in c.events]
    return c.state, events, c.cloud.failure_log, c.cloud.interruptions, c.cloud.jobs


def busy_week(fast: bool, seed: int = 3) -> SimulatedController:
    rates = dataclasses.replace(llama3_rates(boot_failure=0.05), gpu_fault=0.03, node_death=0.02, software=0.01,
                                spot_preemption=0.02)  # accelerated: dozens of failures in a day
    c = controller(spec(16, spares=1, period=10, autoscale=True, idle_timeout_s=600), rates, seed)
    c.run(300, fast=fast)
    c.cloud.submit(SimulatedJob("big", "h100", nodes=16, checkpoint_every_s=900, restart_s=60))
    c.run(10 * 3600, fast=fast)
    c.cloud.submit(SimulatedJob("more", "h100", nodes=24, work_s=3600, restart_s=60))  # grows the pool
    c.run(14 * 3600, fast=fast)
    return c


def test_fast_forward_ends_exactly_where_stepping_every_loop_does() -> None:
    """A day of failures of every kind, jobs and autoscaling both ways: skipping the loops that
    cannot act changes nothing, so long runs (a simulated week) can skip them."""
    stepped, fast = busy_week(fast=False), busy_week(fast=True)
    assert outcome(fast) == outcome(stepped)
    assert fast.cloud.gpu_seconds == pytest.approx(stepped.cloud.gpu_seconds)  # summed in another order
    assert len(stepped.cloud.failure_log) > 20  # the week did have failures of every kind
    assert {kind for _, kind, _ in stepped.cloud.failure_log} == {"gpu", "node", "spot", "software"}
    assert any(e.kind == "scale" for e in stepped.events)  # and autoscaling both ways
    assert fast.ticks * 20 < stepped.ticks


def test_the_seed_decides_the_failures() -> None:
    rates = dataclasses.replace(llama3_rates(), gpu_fault=1e-2)
    runs = []
    for seed in (1, 1, 2):
        c = controller(spec(8), rates, seed)
        c.run(20 * 3600, fast=True)
        runs.append(c.cloud.failure_log)
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_failures_happen_at_the_published_rates() -> None:
    """200 hosts for 90 days at Llama 3's rates: each kind within 4 standard deviations of
    rate x node-hours (a Poisson count)."""
    rates = llama3_rates(boot_failure=0.0)
    c = controller(spec(200, period=10), rates, seed=11, boot_s=60)
    c.run(600, fast=True)
    c.cloud.submit(SimulatedJob("all", "h100", nodes=190, restart_s=60))
    start = c.cloud.now
    c.run(90 * 86400, fast=True)
    node_hours = 200 * (c.cloud.now - start) / 3600
    counts = {kind: sum(1 for _, k, _ in c.cloud.failure_log if k == kind) for kind in ("gpu", "node", "software")}
    for kind, rate, hours in (("gpu", rates.gpu_fault, node_hours), ("node", rates.node_death, node_hours)):
        expected = rate * hours
        assert abs(counts[kind] - expected) < 4 * math.sqrt(expected), (kind, counts[kind], expected)
    job = c.cloud.jobs[0]
    running_hours = job.nodes * (job.progress(c.cloud.now) + job.lost_s) / 3600  # no checkpoint pauses
    expected = rates.software * running_hours
    assert abs(counts["software"] - expected) < 4 * math.sqrt(expected), (counts["software"], expected)
    assert rates.gpu_fault + rates.node_death + rates.software == pytest.approx(419 / LLAMA3_NODE_HOURS)


def test_a_node_death_costs_the_job_what_it_trained_since_its_last_checkpoint() -> None:
    c = controller(spec(4), boot_s=100)
    c.run(200)
    job = c.cloud.submit(SimulatedJob("j", "h100", nodes=4, work_s=3000, checkpoint_every_s=600, restart_s=50))
    started = c.cloud.now
    assert job.state is JobState.RESTARTING
    c.run(50 + 700)  # running since started+50; one checkpoint at 600 s of training, 100 s more since
    victim = job.placed[1]
    c.cloud.kill(victim, "host failure")
    assert job.state is JobState.PENDING and job.committed_s == 600 and job.lost_s == pytest.approx(100)
    result = c.tick()  # the planner replaces the dead host at once
    assert Terminate("h100", victim, "instance gone: host failure") in result.actions
    assert any(isinstance(a, Launch) for a in result.actions)
    c.run(4000, fast=True)
    assert job.state is JobState.DONE and job.interruptions == 1 and job.started_at == started
    # the replacement boots (100-130 s), the job restarts (50 s) and trains the 2,400 s left
    assert 750 + 100 + 50 + 2400 <= job.finished_at - started <= 750 + 130 + 1 + 50 + 2400


def test_a_hot_spare_lets_the_job_restart_without_waiting_for_a_new_node() -> None:
    waits = {}
    for spares in (0, 1):
        c = controller(spec(4, spares=spares), boot_s=300)
        c.run(400)
        job = c.cloud.submit(SimulatedJob("j", "h100", nodes=4, restart_s=10))
        c.run(100)
        c.cloud.kill(job.placed[0], "host failure")
        killed = c.cloud.now
        c.run(1000, fast=True)
        assert job.state is JobState.RUNNING and job.interruptions == 1
        waits[spares] = job.since - job.restart_s - killed  # from the failure to the gang placed again
    assert waits[1] == 0 and 300 <= waits[0] <= 330 + 5  # at once on the spare, against a whole boot


def test_a_gpu_fault_stops_the_job_at_once_and_the_node_is_replaced_after_detection() -> None:
    rates = FailureRates(gpu_fault_detect_s=15.0)
    c = controller(spec(2), rates)
    c.run(200)
    job = c.cloud.submit(SimulatedJob("j", "h100", nodes=2, restart_s=10))
    c.run(100)
    node = c.cloud.nodes[job.placed[0]]
    c.cloud.inject("gpu", node.name)
    assert job.state is JobState.PENDING
    c.run(10)
    assert c.state.nodes[node.name].state is S.READY  # the host is up; the health check has not spoken
    c.run(10)
    assert node.name not in c.state.nodes or c.state.nodes[node.name].state is S.TERMINATING
    assert any(e.kind == "lost" and "GPU fault" in e.message for e in c.events)


def test_spot_reclaims_come_with_a_notice_and_are_replaced() -> None:
    rates = FailureRates(spot_preemption=spot_rate(0.20) * 200)  # accelerated: a few per day on 4 hosts
    c = controller(spec(4), rates, seed=5)
    c.run(2 * 86400, fast=True)
    reclaimed = [name for _, kind, name in c.cloud.failure_log if kind == "spot"]
    assert reclaimed
    lost = [e for e in c.events if e.kind == "lost"]
    assert {e.instance for e in lost} >= set(reclaimed[:-1])
    assert all("spot interruption" in e.message for e in lost)
    notice = c.cloud.failure_log[0][0]
    first = next(e for e in lost if e.instance == reclaimed[0])
    assert first.time >= notice + rates.spot_notice_s
    assert sum(r.state is S.READY for r in c.state.nodes.values()) >= 3


def test_provisioned_gpu_hours_count_every_machine_that_exists() -> None:
    c = controller(spec(3, spares=1), boot_s=60)
    c.run(3600)
    assert c.cloud.gpu_seconds == pytest.approx(4 * 8 * 3600)  # launched at t=0, billed from launch
