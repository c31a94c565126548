"""Passive checks: GPU telemetry, disk and memory pressure, turned into `Check` results.

Thresholds come from the fleet spec's health policy. Which XIDs mean broken hardware follows
NVIDIA's XID catalogue ("XID Errors", NVIDIA GPU deployment and management documentation):
48 double-bit ECC, 61/62 internal microcontroller halt, 64 row-remapper failure, 74 NVLink error,
79 fallen off the bus, 92 high single-bit ECC rate, 94/95 contained/uncontained ECC, 119/120 GSP
timeout/error. Other XIDs (13, 31, 43, ...) usually come from the application and only warn.
"""
from __future__ import annotations

from typing import Any

import psutil

from rayfleet.cluster.health.report import Check, Status
from rayfleet.cluster.health.telemetry import GpuSample
from rayfleet.cluster.spec.fleet import HealthPolicy

HARDWARE_XIDS = frozenset({48, 61, 62, 64, 74, 79, 92, 94, 95, 119, 120})
PCIE_REPLAY_WARN = 1000
"""Replays accumulate slowly on healthy links; thousands point at a bad riser or slot (DCGM's
default PCIe replay warning threshold is in this range)."""
NVLINK_CRC_WARN = 100


def gpu_checks(samples: list[GpuSample], policy: HealthPolicy) -> list[Check]:
    """One check per concern across the node's GPUs, naming the GPUs that fail it. A passing check
    carries its reading too (value: the node's worst figure; message: each GPU's), so `rayfleet
    health` shows what a healthy GPU reads, not only `ok`."""
    out: list[Check] = []

    def worst(name: str, failing: dict[int, str], status: Status, hardware: bool, value: float | None = None,
              threshold: float | None = None, reading: str = "") -> None:
        if failing:
            detail = "; ".join(f"gpu{i}: {why}" for i, why in sorted(failing.items()))
            out.append(Check(name, status, detail, value, threshold, hardware))
        else:
            out.append(Check(name, Status.OK, reading, value, threshold))

    def each(text: Any) -> str:
        return ", ".join(f"gpu{g.index} {text(g)}" for g in samples)

    worst("gpu.responsive", {g.index: "does not respond (hung or fallen off the bus)"
                             for g in samples if not g.responsive}, Status.FAIL, True,
          value=float(sum(g.responsive for g in samples)), reading=f"{len(samples)} GPU(s) answer NVML")
    seen = sorted({x for g in samples for x in g.xids_seen} | {x for g in samples for x in g.xids})
    fatal = {g.index: f"XID {', '.join(map(str, sorted(set(g.xids) & HARDWARE_XIDS)))}"
             for g in samples if set(g.xids) & HARDWARE_XIDS}
    worst("gpu.xid", fatal, Status.FAIL, True, value=float(sum(max(len(g.xids_seen), len(g.xids)) for g in samples)),
          reading=f"XIDs seen: {', '.join(map(str, seen)) if seen else 'none'}")
    if not fatal:
        other = {g.index: f"XID {', '.join(map(str, g.xids))} (application)" for g in samples if g.xids}
        if other:
            out[-1] = Check("gpu.xid", Status.WARN, "; ".join(f"gpu{i}: {w}" for i, w in sorted(other.items())),
                            value=out[-1].value)
    worst("gpu.ecc", {g.index: f"{g.ecc_volatile_uncorrected} volatile uncorrectable ECC errors"
                      for g in samples if g.ecc_volatile_uncorrected > 0}, Status.FAIL, True,
          value=float(max((g.ecc_volatile_uncorrected for g in samples), default=0)), threshold=0.0,
          reading="uncorrectable/correctable (volatile): "
                  + each(lambda g: f"{g.ecc_volatile_uncorrected}/{g.ecc_volatile_corrected}"))
    worst("gpu.remapped_rows", {g.index: "row remapping failed" for g in samples if g.remapped_rows_failed},
          Status.FAIL, True)
    if not any(g.remapped_rows_failed for g in samples):
        pending = {g.index: "row remap pending a GPU reset" for g in samples if g.remapped_rows_pending}
        if pending:
            out[-1] = Check("gpu.remapped_rows", Status.WARN, "; ".join(f"gpu{i}: {w}" for i, w in pending.items()))
    hottest = max((g.temperature_c for g in samples), default=0.0)
    worst("gpu.temperature", {g.index: f"{g.temperature_c:.0f} C" for g in samples
                              if g.temperature_c > policy.max_gpu_temperature_c}, Status.WARN, False,
          value=hottest, threshold=policy.max_gpu_temperature_c, reading=each(lambda g: f"{g.temperature_c:.0f} C"))
    worst("gpu.throttle", {g.index: ", ".join(g.throttle) for g in samples if g.throttle}, Status.WARN, False)
    worst("gpu.pcie", {g.index: f"{g.pcie_replays} PCIe replays" for g in samples
                       if g.pcie_replays > PCIE_REPLAY_WARN}, Status.WARN, False,
          value=float(max((g.pcie_replays for g in samples), default=0)), threshold=float(PCIE_REPLAY_WARN))
    worst("gpu.nvlink", {g.index: f"{g.nvlink_crc_errors} NVLink CRC errors" for g in samples
                         if g.nvlink_crc_errors > NVLINK_CRC_WARN}, Status.WARN, False,
          value=float(max((g.nvlink_crc_errors for g in samples), default=0)), threshold=float(NVLINK_CRC_WARN))
    powers = [g.power_w for g in samples if g.power_w is not None]
    if powers:  # readings only (NVML): a GPU at its power limit also shows in gpu.throttle
        out.append(Check("gpu.power", Status.OK, each(lambda g: f"{_number(g.power_w)} W of {_number(g.power_limit_w)}"),
                         max(powers)))
    clocks = [g.sm_clock_mhz for g in samples if g.sm_clock_mhz is not None]
    if clocks:
        out.append(Check("gpu.clocks", Status.OK, each(lambda g: f"SM {_number(g.sm_clock_mhz)}/"
                                                               f"{_number(g.max_sm_clock_mhz)} MHz, memory "
                                                               f"{_number(g.memory_clock_mhz)} MHz"), min(clocks)))
    return out


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def host_checks(disk_path: str, policy: HealthPolicy) -> list[Check]:
    disk = psutil.disk_usage(disk_path).percent / 100
    memory = psutil.virtual_memory().percent / 100
    return [
        Check("disk", Status.WARN if disk > policy.max_disk_used_fraction else Status.OK,
              f"{disk:.0%} of {disk_path} used" if disk > policy.max_disk_used_fraction else "",
              disk, policy.max_disk_used_fraction),
        Check("memory", Status.WARN if memory > policy.max_memory_used_fraction else Status.OK,
              f"{memory:.0%} of memory used" if memory > policy.max_memory_used_fraction else "",
              memory, policy.max_memory_used_fraction),
    ]


def burn_check(achieved_tflops: float, expected_tflops: float, policy: HealthPolicy, simulated: bool) -> Check:
    """A matmul burn below `min_tflops_fraction` of the expected figure fails the node."""
    floor = policy.min_tflops_fraction * expected_tflops
    source = " (simulated GPU)" if simulated else ""
    if achieved_tflops < floor:
        return Check("burn", Status.FAIL, f"matmul burn {achieved_tflops:.0f} TFLOP/s < {floor:.0f} "
                     f"({policy.min_tflops_fraction:.0%} of expected {expected_tflops:.0f}){source}",
                     achieved_tflops, floor, hardware=True)
    return Check("burn", Status.OK, f"{achieved_tflops:.0f} TFLOP/s{source}", achieved_tflops, floor)


def expected_tflops(peak: float | None, configured: float | None) -> float | None:
    """What a healthy GPU reaches on a large bf16 matmul: the pool's figure, else 75% of peak.

    75%: an 8192^3 bf16 matmul reached 798 of 989 TFLOP/s (81%) on an H100 here (device notes);
    a margin below that keeps clocks and thermals of healthy boards above the line.
    """
    if configured is not None:
        return configured
    return 0.75 * peak if peak else None
