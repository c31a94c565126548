"""Health checks, policy and the ring test, as units (the fleet-level behaviour is in
test_remediation.py and test_health_fleet.py)."""
from __future__ import annotations

import multiprocessing as mp

import pytest

from rayfleet.cluster.health.checks import HARDWARE_XIDS, burn_check, expected_tflops, gpu_checks
from rayfleet.cluster.health.policy import judge, liveness, stragglers
from rayfleet.cluster.health.report import Check, HealthReport, Status
from rayfleet.cluster.health.ring import listen, ring_allreduce
from rayfleet.cluster.health.telemetry import GpuSample, SimulatedGpus
from rayfleet.cluster.spec.fleet import HealthPolicy
from rayfleet.cluster.decide.view import Probe

POLICY = HealthPolicy(heartbeat_timeout_s=3, confirm_window_s=20)


def statuses(checks: list[Check]) -> dict[str, tuple[str, bool]]:
    return {c.name: (c.status.value, c.hardware) for c in checks}


@pytest.mark.parametrize("fault,check,status,hardware", [
    ("xid", "gpu.xid", "fail", True), ("ecc", "gpu.ecc", "fail", True), ("hang", "gpu.responsive", "fail", True),
    ("thermal", "gpu.temperature", "warn", False), ("thermal", "gpu.throttle", "warn", False),
])
def test_each_injected_fault_fails_or_warns_the_check_it_should(fault: str, check: str, status: str,
                                                                hardware: bool) -> None:
    gpus = SimulatedGpus(count=8)
    assert all(c.status is Status.OK for c in gpu_checks(gpus.sample(), POLICY))
    gpus.inject(fault, gpu=3)
    result = statuses(gpu_checks(gpus.sample(), POLICY))
    assert result[check] == (status, hardware)
    assert "gpu3" in next(c.message for c in gpu_checks(gpus.sample(), POLICY) if c.name == check)
    gpus.inject("clear")
    assert all(c.status is Status.OK for c in gpu_checks(gpus.sample(), POLICY))


def test_application_xids_warn_and_hardware_xids_fail() -> None:
    assert 79 in HARDWARE_XIDS and 13 not in HARDWARE_XIDS
    app = statuses(gpu_checks([GpuSample(0, xids=(13,))], POLICY))
    assert app["gpu.xid"] == ("warn", False)
    both = statuses(gpu_checks([GpuSample(0, xids=(13,)), GpuSample(1, xids=(48,))], POLICY))
    assert both["gpu.xid"] == ("fail", True)


def test_unknown_fault_or_gpu_is_refused() -> None:
    gpus = SimulatedGpus(count=2)
    with pytest.raises(ValueError, match="unknown fault"):
        gpus.inject("meltdown")
    with pytest.raises(ValueError, match="out of range"):
        gpus.inject("xid", gpu=5)


def test_burn_fails_below_the_fraction_of_the_expected_figure() -> None:
    expected = expected_tflops(989.0, None)
    assert expected == pytest.approx(741.75)
    assert burn_check(0.9 * expected, expected, POLICY, simulated=True).status is Status.OK
    slow = burn_check(0.5 * expected, expected, POLICY, simulated=False)
    assert slow.status is Status.FAIL and slow.hardware and "70%" in slow.message
    assert expected_tflops(989.0, 500.0) == 500.0 and expected_tflops(None, None) is None


def report(received_at: float, *checks: Check) -> HealthReport:
    return HealthReport("n", "id", received_at, checks, received_at=received_at)


def test_judge_levels() -> None:
    assert judge(None).level == "healthy"
    assert judge(report(0)).level == "healthy"
    warn = judge(report(0, Check("gpu.temperature", Status.WARN, "gpu0: 92 C")))
    assert (warn.level, warn.hardware) == ("degraded", False)
    fail = judge(report(0, Check("gpu.ecc", Status.FAIL, "gpu1: 1 errors", hardware=True)))
    assert (fail.level, fail.hardware) == ("unhealthy", True) and "gpu.ecc" in fail.reason


@pytest.mark.parametrize("silence,probe,suspect_for,expected", [
    (1.0, None, None, "alive"),            # heard recently
    (1.0, Probe.GONE, None, "dead"),       # the process is gone: at once, whatever the heartbeat
    (5.0, None, None, "suspect"),          # silent, no other evidence yet
    (5.0, Probe.OK, 30.0, "suspect"),      # silent agent but the raylet answers: never dead on that
    (30.0, Probe.HUNG, 10.0, "suspect"),   # evidence agrees, but not for the whole window yet
    (30.0, Probe.HUNG, 25.0, "dead"),      # agrees for longer than the confirm window
])
def test_liveness_needs_agreeing_evidence_over_the_confirm_window(silence: float, probe: Probe | None,
                                                                  suspect_for: float | None, expected: str) -> None:
    now = 1000.0
    suspect_since = now - suspect_for if suspect_for is not None else None
    assert liveness(report(now - silence), probe, now, POLICY, 0.0, suspect_since).state == expected


def test_silence_while_the_controller_was_starved_is_not_evidence() -> None:
    now = 1000.0
    assert liveness(report(now - 10), None, now, POLICY, quiet_until=now - 1, suspect_since=None).state == "alive"
    assert liveness(report(now - 10), None, now, POLICY, quiet_until=0.0, suspect_since=None).state == "suspect"


def test_stragglers_are_below_the_fraction_of_the_median() -> None:
    assert stragglers({"a": 100.0, "b": 95.0, "c": 40.0, "d": 105.0}, 0.7) == {"c": 40.0}
    assert stragglers({"a": 100.0, "b": 90.0}, 0.7) == {}
    assert stragglers({"a": 100.0}, 0.7) == {}


def _rank(rank: int, world: int, ports: mp.Queue, peers: mp.Queue, out: mp.Queue, slow: int) -> None:
    server = listen()
    ports.put((rank, server.getsockname()[1]))
    result = ring_allreduce(rank, peers.get(), server, 1_000_000, throttle_bytes_per_s=3e7 if rank == slow else None)
    out.put((rank, result.sum_ok, result.predecessor_bandwidth))


def test_ring_allreduce_sums_correctly_and_the_slow_senders_successor_sees_it() -> None:
    world, slow = 4, 2
    ports, out = mp.Queue(), mp.Queue()
    peer_queues = [mp.Queue() for _ in range(world)]
    procs = [mp.Process(target=_rank, args=(r, world, ports, peer_queues[r], out, slow)) for r in range(world)]
    for proc in procs:
        proc.start()
    try:
        addresses = dict(ports.get(timeout=30) for _ in range(world))
        for queue in peer_queues:
            queue.put([("127.0.0.1", addresses[r]) for r in range(world)])
        results = {rank: (ok, bandwidth) for rank, ok, bandwidth in (out.get(timeout=60) for _ in range(world))}
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    assert all(ok for ok, _ in results.values())
    sender_bandwidth = {(rank - 1) % world: bandwidth for rank, (_, bandwidth) in results.items()}
    assert list(stragglers({str(k): v for k, v in sender_bandwidth.items()}, 0.7)) == [str(slow)]
