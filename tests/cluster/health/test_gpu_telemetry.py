"""Which telemetry a node's agent reads, and what a GPU node reports when NVML cannot be read."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rayfleet.cluster.health.agent import HealthAgent
from rayfleet.cluster.health.checks import gpu_checks
from rayfleet.cluster.health.report import Status
from rayfleet.cluster.health.telemetry import GpuSample, SimulatedGpus, UnreadableGpus, open_telemetry
from rayfleet.cluster.spec.fleet import HealthPolicy
from rayfleet.names import DEVICE_DIR_ENV, SIMULATE_GPUS_ENV


class Reports:
    """Where the agent sends its heartbeats (the controller actor's handle has this shape)."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.report_health = self

    def remote(self, report: dict[str, Any]) -> None:
        self.sent.append(report)


@pytest.fixture
def gpu_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A node with two NVIDIA device files. This machine has no NVIDIA driver (nor pynvml), so
    NVML fails for real, as on a GPU node with a broken driver or without rayfleet[gpu]."""
    devices = tmp_path / "dev"
    devices.mkdir()
    for name in ("nvidia0", "nvidia1", "nvidiactl"):
        (devices / name).touch()
    monkeypatch.setenv(DEVICE_DIR_ENV, str(devices))
    monkeypatch.delenv(SIMULATE_GPUS_ENV, raising=False)
    return devices


def test_a_gpu_node_whose_nvml_cannot_be_read_fails_its_gpu_check(gpu_node: Path) -> None:
    reports = Reports()
    agent = HealthAgent("gpu-node-0", "0" * 56, 2, None, HealthPolicy().model_dump_json(), reports)
    try:
        assert isinstance(agent.telemetry, UnreadableGpus)
        report = agent.report()
        assert not report.simulated
        failed = {c.name: c for c in report.failing()}
        assert "gpu.nvml" in failed, report.checks
        assert "2 NVIDIA device(s)" in failed["gpu.nvml"].message
        assert "rayfleet[gpu]" in failed["gpu.nvml"].message
    finally:
        agent.stop()


def test_gpu_telemetry_is_simulated_only_without_nvidia_devices_or_when_asked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gpu_node: Path) -> None:
    assert isinstance(open_telemetry(2), UnreadableGpus)
    assert isinstance(open_telemetry(2, force_simulated=True), SimulatedGpus)
    monkeypatch.setenv(SIMULATE_GPUS_ENV, "1")
    assert isinstance(open_telemetry(2), SimulatedGpus)
    monkeypatch.delenv(SIMULATE_GPUS_ENV)
    monkeypatch.setenv(DEVICE_DIR_ENV, str(tmp_path / "no-devices"))
    assert isinstance(open_telemetry(2), SimulatedGpus)


def test_passing_gpu_checks_carry_their_readings() -> None:
    samples = [GpuSample(0, temperature_c=45, power_w=350.5, power_limit_w=700, sm_clock_mhz=1980,
                         max_sm_clock_mhz=1980, memory_clock_mhz=2619, ecc_volatile_corrected=3, xids_seen=(13,)),
               GpuSample(1, temperature_c=51, power_w=420.0, power_limit_w=700, sm_clock_mhz=1755,
                         max_sm_clock_mhz=1980, memory_clock_mhz=2619)]
    checks = {c.name: c for c in gpu_checks(samples, HealthPolicy())}
    assert all(c.status is Status.OK for c in checks.values()), checks
    assert checks["gpu.temperature"].value == 51 and "gpu0 45 C, gpu1 51 C" in checks["gpu.temperature"].message
    assert checks["gpu.power"].value == 420.0 and "gpu0 350 W of 700" in checks["gpu.power"].message
    assert checks["gpu.clocks"].value == 1755 and "SM 1755/1980 MHz" in checks["gpu.clocks"].message
    assert checks["gpu.ecc"].value == 0 and "gpu0 0/3" in checks["gpu.ecc"].message
    assert checks["gpu.xid"].value == 1 and "XIDs seen: 13" in checks["gpu.xid"].message
