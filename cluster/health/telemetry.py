"""GPU telemetry: NVML where GPUs exist, a simulated source per node everywhere else.

Both produce the same `GpuSample`s, so the checks and the policy never know which one ran. The
simulated source is what `rayfleet chaos inject` writes; it never touches a real GPU's state.
NVML (pynvml, from the `rayfleet[gpu]` extra) is imported lazily, only on nodes that have GPUs.

A node has GPUs when NVIDIA's device files exist (/dev/nvidia0, ...; `RAYFLEET_DEVICE_DIR` names
another folder). There, NVML that cannot be read (no pynvml, no driver library, an init error)
is a failed check (`UnreadableGpus`), never simulated telemetry: a GPU node that reports made-up
healthy values would keep running work on GPUs nobody watches. Simulation is for nodes without
NVIDIA devices (a local fleet on a CPU machine) or where `RAYFLEET_SIMULATE_GPUS=1` asks for it.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from rayfleet.names import DEVICE_DIR_ENV, SIMULATE_GPUS_ENV

log = logging.getLogger(__name__)

FAULTS = ("xid", "ecc", "thermal", "slow", "hang")


@dataclass(frozen=True)
class GpuSample:
    index: int
    temperature_c: float = 40.0
    xids: tuple[int, ...] = ()                  # XID events since the last sample
    ecc_volatile_uncorrected: int = 0           # volatile uncorrectable ECC errors (since driver load)
    remapped_rows_pending: bool = False         # a row remap waits for a GPU reset (A100/H100)
    remapped_rows_failed: bool = False          # row remapping failed: the memory is bad
    pcie_replays: int = 0                       # PCIe replay counter (link-level retransmissions)
    nvlink_crc_errors: int = 0
    throttle: tuple[str, ...] = ()              # active clock-throttle reasons that mean trouble
    responsive: bool = True                     # False: the GPU did not answer (a hang, or off the bus)
    speed: float = 1.0                          # simulated only: throughput factor for burn and link tests
    power_w: float | None = None                # power draw (NVML; None where not read)
    power_limit_w: float | None = None          # enforced power limit
    sm_clock_mhz: float | None = None           # current SM clock
    max_sm_clock_mhz: float | None = None       # its maximum
    memory_clock_mhz: float | None = None
    ecc_volatile_corrected: int = 0             # volatile correctable ECC errors (informational)
    xids_seen: tuple[int, ...] = ()             # every XID since the agent started


class Telemetry(Protocol):
    simulated: bool

    def sample(self) -> list[GpuSample]: ...


class NvmlUnreadable(RuntimeError):
    """NVML cannot be read on a node that has NVIDIA GPUs."""


@dataclass
class UnreadableGpus:
    """A GPU node whose NVML could not be opened: every sample raises, so its GPU check fails."""

    error: str
    count: int
    simulated: bool = False

    def sample(self) -> list[GpuSample]:
        raise NvmlUnreadable(self.error)


@dataclass
class SimulatedGpus:
    """A node's GPUs as a model: healthy until a fault is injected."""

    count: int
    simulated: bool = True
    gpus: list[GpuSample] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.gpus = [GpuSample(index=i) for i in range(self.count)]

    def inject(self, fault: str, gpu: int = 0) -> None:
        """Make GPU `gpu` show `fault`: xid, ecc, thermal, slow, hang; or `clear` to heal all."""
        if fault == "clear":
            self.gpus = [GpuSample(index=i) for i in range(self.count)]
            return
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; one of {', '.join(FAULTS)} or clear")
        if not 0 <= gpu < max(1, self.count):
            raise ValueError(f"gpu {gpu} out of range 0..{self.count - 1}")
        current = self.gpus[gpu] if self.gpus else GpuSample(index=0)
        changes: dict[str, Any] = {
            # XID 79: "GPU has fallen off the bus" (NVIDIA XID catalogue): the node must go.
            "xid": {"xids": (*current.xids, 79)},
            # A double-bit error: XID 48 and a volatile uncorrectable ECC count.
            "ecc": {"xids": (*current.xids, 48), "ecc_volatile_uncorrected": current.ecc_volatile_uncorrected + 1},
            "thermal": {"temperature_c": 92.0, "throttle": ("hw_thermal_slowdown",)},
            "slow": {"speed": 0.3},
            "hang": {"responsive": False},
        }[fault]
        updated = dataclasses.replace(current, **changes)
        if self.gpus:
            self.gpus[gpu] = updated
        else:
            self.gpus = [updated]

    def sample(self) -> list[GpuSample]:
        return list(self.gpus)

    @property
    def speed(self) -> float:
        return min((g.speed for g in self.gpus), default=1.0)


class NvmlGpus:
    """Real GPUs through NVML. XIDs arrive as events; counters are read each sample."""

    simulated = False

    def __init__(self) -> None:
        import pynvml

        self.nvml = pynvml
        pynvml.nvmlInit()
        self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        self.seen: dict[int, list[int]] = {}
        self.events = None
        try:
            self.events = pynvml.nvmlEventSetCreate()
            for handle in self.handles:
                pynvml.nvmlDeviceRegisterEvents(handle, pynvml.nvmlEventTypeXidCriticalError, self.events)
        except pynvml.NVMLError as error:  # not supported on every board or in every container
            log.info("XID events unavailable: %s", error)

    @property
    def count(self) -> int:
        return len(self.handles)

    def sample(self) -> list[GpuSample]:
        xids = self._drain_xids()
        for index, found in xids.items():
            self.seen.setdefault(index, []).extend(found)
        return [dataclasses.replace(self._one(i, handle, tuple(xids.get(i, ()))), xids_seen=tuple(self.seen.get(i, ())))
                for i, handle in enumerate(self.handles)]

    def _drain_xids(self) -> dict[int, list[int]]:
        found: dict[int, list[int]] = {}
        if self.events is None:
            return found
        nvml = self.nvml
        while True:
            try:
                event = nvml.nvmlEventSetWait_v2(self.events, 0)
            except nvml.NVMLError:  # NVML_ERROR_TIMEOUT: no more events
                return found
            index = self.handles.index(event.device) if event.device in self.handles else 0
            found.setdefault(index, []).append(int(event.eventData))

    def _one(self, index: int, handle: Any, xids: tuple[int, ...]) -> GpuSample:
        nvml = self.nvml

        def read(fn: Any, *args: Any, default: Any = None) -> Any:
            try:
                return fn(handle, *args)
            except nvml.NVMLError:
                return default

        try:
            temperature = float(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))
        except nvml.NVMLError as error:  # the GPU does not answer: off the bus or hung
            log.warning("GPU %d does not answer NVML: %s", index, error)
            return GpuSample(index=index, xids=xids, responsive=False)
        ecc = read(nvml.nvmlDeviceGetTotalEccErrors, nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
                   nvml.NVML_VOLATILE_ECC, default=0)
        remap = read(nvml.nvmlDeviceGetRemappedRows, default=(0, 0, 0, 0))
        reasons = read(nvml.nvmlDeviceGetCurrentClocksThrottleReasons, default=0) or 0
        throttle = tuple(name for name, bit in (
            ("hw_slowdown", getattr(nvml, "nvmlClocksThrottleReasonHwSlowdown", 0)),
            ("hw_thermal_slowdown", getattr(nvml, "nvmlClocksThrottleReasonHwThermalSlowdown", 0)),
            ("hw_power_brake", getattr(nvml, "nvmlClocksThrottleReasonHwPowerBrakeSlowdown", 0)),
            ("sw_thermal_slowdown", getattr(nvml, "nvmlClocksThrottleReasonSwThermalSlowdown", 0)),
        ) if bit and reasons & bit)
        ecc_corrected = read(nvml.nvmlDeviceGetTotalEccErrors, nvml.NVML_MEMORY_ERROR_TYPE_CORRECTED,
                             nvml.NVML_VOLATILE_ECC, default=0)
        power_mw = read(nvml.nvmlDeviceGetPowerUsage)
        limit_mw = read(nvml.nvmlDeviceGetEnforcedPowerLimit)
        sm = read(nvml.nvmlDeviceGetClockInfo, nvml.NVML_CLOCK_SM)
        sm_max = read(nvml.nvmlDeviceGetMaxClockInfo, nvml.NVML_CLOCK_SM)
        memory = read(nvml.nvmlDeviceGetClockInfo, nvml.NVML_CLOCK_MEM)
        crc = 0
        for link in range(getattr(nvml, "NVML_NVLINK_MAX_LINKS", 18)):
            crc += read(nvml.nvmlDeviceGetNvLinkErrorCounter, link, nvml.NVML_NVLINK_ERROR_DL_CRC_DATA, default=0) or 0
        return GpuSample(index=index, temperature_c=temperature, xids=xids, ecc_volatile_uncorrected=int(ecc or 0),
                         remapped_rows_pending=bool(remap[2]), remapped_rows_failed=bool(remap[3]),
                         pcie_replays=int(read(nvml.nvmlDeviceGetPcieReplayCounter, default=0) or 0),
                         nvlink_crc_errors=int(crc), throttle=throttle,
                         power_w=None if power_mw is None else power_mw / 1000.0,
                         power_limit_w=None if limit_mw is None else limit_mw / 1000.0,
                         sm_clock_mhz=None if sm is None else float(sm),
                         max_sm_clock_mhz=None if sm_max is None else float(sm_max),
                         memory_clock_mhz=None if memory is None else float(memory),
                         ecc_volatile_corrected=int(ecc_corrected or 0))


def nvidia_devices() -> list[Path]:
    """This node's NVIDIA GPU device files (nvidia0, nvidia1, ...)."""
    folder = Path(os.environ.get(DEVICE_DIR_ENV) or "/dev")
    return sorted(p for p in folder.glob("nvidia[0-9]*") if p.name[len("nvidia"):].isdigit())


def open_telemetry(gpus: int, force_simulated: bool = False) -> Telemetry:
    """NVML on a node with NVIDIA GPUs (UnreadableGpus when NVML fails there); the simulated
    source on a node without them, or when asked (`force_simulated`, RAYFLEET_SIMULATE_GPUS=1)."""
    devices = nvidia_devices()
    if force_simulated or os.environ.get(SIMULATE_GPUS_ENV) == "1" or not devices:
        return SimulatedGpus(count=gpus)
    try:
        real = NvmlGpus()
    except Exception as error:  # no pynvml, no driver library, or NVML refused to start
        message = (f"NVML cannot be read on a node with {len(devices)} NVIDIA device(s): {type(error).__name__}: "
                   f"{error}; install rayfleet[gpu] (nvidia-ml-py) and check the driver (nvidia-smi)")
        log.error("%s", message)
        return UnreadableGpus(message, count=max(gpus, len(devices)))
    if not real.count:
        message = f"NVML sees no GPU on a node with {len(devices)} NVIDIA device(s); check the driver (nvidia-smi)"
        log.error("%s", message)
        return UnreadableGpus(message, count=max(gpus, len(devices)))
    return real
