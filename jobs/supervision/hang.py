"""Hang detection, pure: is a job still making progress?

Every rank publishes a beat after each step (`job/<name>/beat/<rank>` in the GCS KV: its step, the
time, its median step time, its pid and node). A job hangs when some rank's newest beat is older
than `factor x median step time + margin` (before `first_steps` steps, `first_steps_timeout_s`).
A slow job keeps beating, its median grows with it, and it is never called hung.

Detection says only that the job stalled. Which rank caused it is decided from evidence read
after (attribution.py): the beats cannot tell, since they lag by up to a second and every rank
of a synchronous job stops within a step of the stuck one.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Mapping

from rayfleet.jobs.client.spec import HangSection
from rayfleet.jobs.supervision.attribution import Attribution


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
class Stall:
    """A job whose ranks all stopped advancing for longer than its bound."""
    step: int          # the newest step any rank reported
    since: float       # when the newest beat was published
    silent_s: float
    bound_s: float


@dataclass(frozen=True)
class Hang:
    """A stall and who caused it (attribution.py)."""
    stall: Stall
    attribution: Attribution
    ranks: Mapping[int, Beat]

    @property
    def rank(self) -> int | None:
        """The culprit, when the evidence names exactly one."""
        culprits = self.attribution.culprits
        return culprits[0] if len(culprits) == 1 else None

    @property
    def culprit_nodes(self) -> list[str]:
        """The Ray node ids of the culprits (none when undecided): only these count against their node."""
        return sorted({self.ranks[r].node_id for r in self.attribution.culprits if r in self.ranks})

    @property
    def reason(self) -> str:
        return (f"no rank made progress for {self.stall.silent_s:.0f}s after step {self.stall.step} (the bound "
                f"was {self.stall.bound_s:.1f}s); {self.attribution.summary()}")


def bound_s(beats: Mapping[int, Beat], policy: HangSection) -> float:
    """How long a step may take before the job counts as hung."""
    medians = [b.median_step_s for b in beats.values() if b.median_step_s is not None]
    if not medians or min(b.step for b in beats.values()) < policy.first_steps:
        return policy.first_steps_timeout_s
    return policy.factor * statistics.median(medians) + policy.margin_s


def stalled(beats: Mapping[int, Beat], now: float, policy: HangSection, world: int) -> Stall | None:
    """The job's stall, if it has one. Needs a beat from every rank (before that, nothing is known)."""
    if not policy.enabled or len(beats) < world:
        return None
    limit = bound_s(beats, policy)
    newest = max(beats.values(), key=lambda b: (b.time, b.step))
    silent = now - newest.time  # the job as a whole: no rank advanced
    if silent <= limit:
        return None
    return Stall(step=max(b.step for b in beats.values()), since=newest.time, silent_s=silent, bound_s=limit)
