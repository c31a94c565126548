"""Hang detection, pure: is a job still making progress?

Every rank publishes a beat after each step (`job/<name>/beat/<rank>` in the GCS KV: its step, the
time, its median step time, its pid and node). A job hangs when some rank's newest beat is older
than `factor x median step time + margin` (before `first_steps` steps, `first_steps_timeout_s`).
The stuck rank is the one that stopped first: the others finish their step and then wait in the
next collective, so the oldest beat names the culprit. A slow job keeps beating, its median
grows with it, and it is never called hung.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Mapping

from rayfleet.jobs.client.spec import HangSection


@dataclass(frozen=True)
class Beat:
    rank: int
    step: int
    time: float                  # when the step finished (the rank's clock: same host for local fleets)
    median_step_s: float | None  # over its recent steps; None before it has any
    pid: int
    node_id: str
    submission_id: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Beat:
        return cls(rank=int(data["rank"]), step=int(data["step"]), time=float(data["time"]),
                   median_step_s=data.get("median_step_s"), pid=int(data["pid"]), node_id=str(data["node_id"]),
                   submission_id=str(data["submission_id"]))


@dataclass(frozen=True)
class Hang:
    rank: int
    node_id: str
    pid: int
    step: int
    silent_s: float
    bound_s: float

    @property
    def reason(self) -> str:
        return (f"rank {self.rank} (pid {self.pid}) made no progress for {self.silent_s:.0f}s after step "
                f"{self.step}; the bound was {self.bound_s:.1f}s")


def bound_s(beats: Mapping[int, Beat], policy: HangSection) -> float:
    """How long a step may take before the job counts as hung."""
    medians = [b.median_step_s for b in beats.values() if b.median_step_s is not None]
    if not medians or min(b.step for b in beats.values()) < policy.first_steps:
        return policy.first_steps_timeout_s
    return policy.factor * statistics.median(medians) + policy.margin_s


def hung(beats: Mapping[int, Beat], now: float, policy: HangSection, world: int) -> Hang | None:
    """The job's hang, if it has one. Needs a beat from every rank (before that, nothing is known)."""
    if not policy.enabled or len(beats) < world:
        return None
    limit = bound_s(beats, policy)
    stalest = min(beats.values(), key=lambda b: (b.time, b.step))
    silent = now - max(b.time for b in beats.values())  # the job as a whole: no rank advanced
    if silent <= limit:
        return None
    return Hang(rank=stalest.rank, node_id=stalest.node_id, pid=stalest.pid, step=stalest.step,
                silent_s=now - stalest.time, bound_s=limit)
