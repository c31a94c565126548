"""Health policy, pure: what a node's reports and probes say about it.

Two questions, kept apart:
- checks: healthy, degraded (a WARN: kept and watched) or unhealthy (a FAIL), and whether the
  failure is hardware (XID, ECC, a failed burn or link test: quarantine rather than delete);
- liveness: alive, suspect or dead. A process that is gone is dead at once (the provider says so,
  or the raylet refuses connections). Silence alone only makes a node suspect; it is declared dead
  when the evidence agrees for `confirm_window_s`: no heartbeat AND the raylet's own health check
  unanswered. A controller that was itself starved (`quiet_until`) counts none of its own silence
  against the nodes. This is SWIM's suspicion with Lifeguard's local-health awareness (Das et al.
  2002; Dadgar et al., "Lifeguard", 2018), which cut false failure detections by orders of magnitude.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Literal, Mapping

from rayfleet.cluster.health.report import Check, HealthReport, Status
from rayfleet.cluster.spec.fleet import HealthPolicy
from rayfleet.cluster.decide.view import Probe

Level = Literal["healthy", "degraded", "unhealthy"]


@dataclass(frozen=True)
class Verdict:
    level: Level
    hardware: bool = False
    reason: str = ""


def judge(report: HealthReport | None) -> Verdict:
    """The checks' verdict; a node that has not reported yet is healthy until it says otherwise."""
    if report is None:
        return Verdict("healthy")
    failing = report.failing()
    if failing:
        return Verdict("unhealthy", any(c.hardware for c in failing), _reasons(failing))
    warning = report.warning()
    if warning:
        return Verdict("degraded", False, _reasons(warning))
    return Verdict("healthy")


def _reasons(checks: list[Check]) -> str:
    return "; ".join(f"{c.name}: {c.message}" if c.message else c.name for c in checks)


@dataclass(frozen=True)
class Liveness:
    state: Literal["alive", "suspect", "dead"]
    reason: str = ""


def liveness(report: HealthReport | None, probe: Probe | None, now: float, policy: HealthPolicy,
             quiet_until: float, suspect_since: float | None) -> Liveness:
    """Alive, suspect or dead from the heartbeat, the raylet probe and how long suspicion has lasted."""
    if probe is Probe.GONE:
        return Liveness("dead", "its raylet refuses connections: the process is gone")
    if report is None:
        return Liveness("alive")  # no agent report yet: silence is not evidence before the first one
    silence = now - max(report.received_at, quiet_until)
    if silence <= policy.heartbeat_timeout_s:
        return Liveness("alive")
    if probe is Probe.OK:
        return Liveness("suspect", f"no heartbeat for {silence:.1f}s but its raylet answers")
    if suspect_since is not None and now - suspect_since >= policy.confirm_window_s and probe is Probe.HUNG:
        return Liveness("dead", f"unresponsive for {now - suspect_since:.0f}s: no heartbeat and its raylet "
                                f"does not answer its health check")
    return Liveness("suspect", f"no heartbeat for {silence:.1f}s")


def stragglers(bandwidth: Mapping[str, float], fraction: float) -> dict[str, float]:
    """Nodes whose measured link bandwidth is below `fraction` of the pool's median."""
    if len(bandwidth) < 2:
        return {}
    median = statistics.median(bandwidth.values())
    return {node: value for node, value in bandwidth.items() if value < fraction * median}


def link_check(node: str, bandwidth: Mapping[str, float], fraction: float, sum_ok: bool) -> Check:
    """The result of the pool's ring test for one node."""
    if not sum_ok:
        return Check("link", Status.FAIL, "the ring all-reduce returned a wrong sum through this node",
                     hardware=True)
    slow = stragglers(bandwidth, fraction)
    median = statistics.median(bandwidth.values()) if bandwidth else 0.0
    value = bandwidth.get(node)
    if node in slow:
        return Check("link", Status.WARN, f"straggler: {value / 1e6:.0f} MB/s < {fraction:.0%} of the pool's "
                     f"median {median / 1e6:.0f} MB/s", value, fraction * median)
    return Check("link", Status.OK, f"{(value or 0) / 1e6:.0f} MB/s", value, fraction * median)
