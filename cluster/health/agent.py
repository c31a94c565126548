"""The health agent: one actor pinned to each node, named `rayfleet-health-<instance>`.

It heartbeats every `heartbeat_interval_s` with its latest check results (the controller times
the heartbeat on receipt), refreshes passive checks every `check_interval_s`, runs the matmul burn
when it starts (a node is admitted only once it passed) and on demand, joins the pool's ring
all-reduce test on demand, and takes simulated faults from `rayfleet chaos inject`.
It takes no CPU from the node (num_cpus=0), so it runs on hot spares too.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

from rayfleet.cluster.health import ring
from rayfleet.cluster.health.burn import run_burn
from rayfleet.cluster.health.checks import burn_check, gpu_checks, host_checks
from rayfleet.cluster.health.report import Check, HealthReport, Status
from rayfleet.cluster.health.notices import NoticeSource
from rayfleet.cluster.health.telemetry import NvmlUnreadable, SimulatedGpus, UnreadableGpus, open_telemetry
from rayfleet.cluster.health import flight_recorder, rank_evidence, stepmarks
from rayfleet.cluster.spec.fleet import HealthPolicy
from rayfleet.names import AGENT_PREFIX

log = logging.getLogger("rayfleet.health")



def agent_name(instance: str) -> str:
    return f"{AGENT_PREFIX}{instance}"


class HealthAgent:
    def __init__(self, instance: str, node_id: str, gpus: int, expected_tflops: float | None,
                 policy_json: str, controller: Any, disk_path: str = "/") -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.instance = instance
        self.node_id = node_id
        self.policy = HealthPolicy.model_validate_json(policy_json)
        self.controller = controller
        self.disk_path = disk_path
        self.expected = expected_tflops
        self.telemetry = open_telemetry(gpus)
        self.sequence = 0
        self.checks: list[Check] = []
        self.burn: Check | None = None
        self.link: Check | None = None
        self._ring_server: socket.socket | None = None
        self.notices = NoticeSource()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.run_burn()
        self.refresh()
        self._thread = threading.Thread(target=self._heartbeat, name="rayfleet-health", daemon=True)
        self._thread.start()

    # --- the schedule -------------------------------------------------------------------------
    def _heartbeat(self) -> None:
        last_refresh = time.monotonic()
        while not self._stop.wait(self.policy.heartbeat_interval_s):
            if time.monotonic() - last_refresh >= self.policy.check_interval_s:
                self.refresh()
                last_refresh = time.monotonic()
                try:
                    stepmarks.sweep()  # the step counters of ranks that were killed
                    flight_recorder.sweep()  # and a request a killed rank never answered
                except OSError as error:
                    log.debug("step counters not swept: %s", error)
            self.send()

    def refresh(self) -> None:
        """Re-read telemetry and host state into the passive checks."""
        try:
            checks = gpu_checks(self.telemetry.sample(), self.policy) if self.gpu_count else []
            checks += host_checks(self.disk_path, self.policy)
        except NvmlUnreadable as error:  # a GPU node nobody can watch must not run work
            checks = [Check("gpu.nvml", Status.FAIL, str(error))]
        except Exception as error:  # a check that cannot run warns; it is no evidence against the node
            checks = [Check("agent", Status.WARN, f"checks could not run: {error}")]
        with self._lock:
            self.checks = checks

    def report(self) -> HealthReport:
        notice = self.notices.notice()
        with self._lock:
            self.sequence += 1
            extra = [c for c in (self.burn, self.link) if c is not None]
            return HealthReport(instance=self.instance, node_id=self.node_id, sent_at=time.time(),
                                checks=tuple(self.checks + extra), sequence=self.sequence,
                                simulated=self.telemetry.simulated,
                                notice_deadline=notice[0] if notice else None, notice_reason=notice[1] if notice else "")

    def send(self) -> None:
        try:
            self.controller.report_health.remote(self.report().to_json())
        except Exception as error:  # the controller is restarting: the next heartbeat tries again
            log.debug("heartbeat not sent: %s", error)

    @property
    def gpu_count(self) -> int:
        if isinstance(self.telemetry, UnreadableGpus):
            return self.telemetry.count
        return len(self.telemetry.sample())

    # --- called by the controller and `rayfleet chaos` ------------------------------------------
    def ping(self) -> dict[str, Any]:
        return {"instance": self.instance, "simulated": self.telemetry.simulated, "sequence": self.sequence}

    def run_burn(self) -> dict[str, Any] | None:
        """The matmul burn against the pool's expected TFLOP/s; its result joins the reports."""
        if self.expected is None or not self.gpu_count:
            return None
        achieved = run_burn(self.telemetry, self.expected)
        check = burn_check(achieved, self.expected, self.policy, self.telemetry.simulated)
        with self._lock:
            self.burn = check
        return check.to_json()

    def inject(self, fault: str, gpu: int = 0) -> dict[str, Any]:
        """A simulated fault (or `clear`). Refused on real GPUs: chaos never touches a real GPU."""
        if not isinstance(self.telemetry, SimulatedGpus):
            raise ValueError(f"{self.instance} has real GPUs (NVML); faults are injected only into simulated telemetry")
        self.telemetry.inject(fault, gpu)
        if fault == "clear":  # the active checks' results go too; a slow GPU shows at the next burn
            self.run_burn()
            with self._lock:
                self.link = None
        self.refresh()
        self.send()  # at once, not at the next heartbeat
        return self.report().to_json()

    def ring_listen(self) -> tuple[str, int]:
        """Open this agent's port for the ring test; returns (address, port)."""
        import ray

        self._ring_server = ring.listen()
        return ray.util.get_node_ip_address(), self._ring_server.getsockname()[1]

    def ring_run(self, rank: int, peers: list[tuple[str, int]], elements: int) -> dict[str, Any]:
        assert self._ring_server is not None, "ring_listen first"
        speed = self.telemetry.speed if isinstance(self.telemetry, SimulatedGpus) else 1.0
        throttle = speed * ring.SIMULATED_LINK_BYTES_PER_S if speed < 1.0 else None
        try:
            result = ring.ring_allreduce(rank, [tuple(p) for p in peers], self._ring_server, elements, throttle)
        finally:
            self._ring_server.close()
            self._ring_server = None
        return {"rank": result.rank, "instance": self.instance, "bandwidth": result.predecessor_bandwidth,
                "sum_ok": result.sum_ok}

    def run_checks(self) -> dict[str, Any]:
        """Run the active checks and refresh the passive ones now, then report at once (a release
        from quarantine waits for this)."""
        self.run_burn()
        self.refresh()
        self.send()
        return self.report().to_json()

    def preempt(self, seconds: float) -> dict[str, Any]:
        """Chaos: announce that this node goes away in `seconds` (as a spot interruption would)."""
        self.notices.simulate(time.time() + seconds, f"simulated preemption notice ({seconds:.0f}s)")
        self.send()
        return self.report().to_json()

    # --- what the controller asks of a node when a job on it hangs ------------------------------
    def inspect(self, pid: int) -> dict[str, Any]:
        """A rank's process state and step counters (cluster/health/rank_evidence.py)."""
        return rank_evidence.inspect(pid)

    def dump_stacks(self, pid: int, timeout_s: float = 20.0) -> str:
        """A rank's Python stacks, through py-spy (cluster/health/rank_evidence.py)."""
        return rank_evidence.dump_stacks(pid, timeout_s)

    def kill(self, pid: int) -> bool:
        """SIGKILL a training worker of a hung job (a stopped process dies too); True if it was alive."""
        import signal as signals

        import psutil

        try:
            psutil.Process(pid).send_signal(signals.SIGKILL)
            return True
        except psutil.Error:
            return False

    def set_link_check(self, check_json: dict[str, Any] | None) -> None:
        """The controller's verdict on this node's link, kept in the reports until the next test."""
        with self._lock:
            self.link = Check.from_json(check_json) if check_json else None

    def stop(self) -> None:
        self._stop.set()

