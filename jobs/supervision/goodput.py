"""Goodput accounting, pure: where a job's wall-clock time went, and its ETTR.

ETTR (effective training time ratio, as in Meta's study of its research clusters, "Revisiting
Reliability in Large-Scale Machine Learning Research Clusters", 2024) is the share of a job's
wall-clock time that produced training progress that was kept.

The job's durable history (jobs/supervision/history.py) holds what this needs, recorded as it happens:
`submitted`, `driver` (the entrypoint runs), `worker` (rank 0 of an attempt runs: the gang was
placed and its processes started), `started` (the attempt resumed from a step), `step` (rank 0
finished a step: its number and duration), `checkpoint` (a save and its duration), `notice`
(the job checkpointed for a node going away), `fault` and `hang` (the controller saw a node of
the job fail, or the job stop making progress), `finished`.

The wall time [submitted, finished or now) is cut into consecutive intervals, each given to one
part, so the parts add up to the wall time exactly:

    waiting     submitted -> the first attempt's workers run (queued, gang not placed, processes starting)
    startup     the first attempt's workers run -> its first step begins (model, process group,
                checkpoint load); and the last step's end -> the job's end (teardown)
    training    steps whose result was kept: a step's interval runs from the end of the step (or
                checkpoint) before it to its own end
    rollback    steps done by an attempt that failed after them and before a checkpoint covered
                them: the next attempt resumed from an earlier step and did them again
    checkpoint  saving checkpoints
    detection   the last step of a failed attempt -> the failure was detected (a `fault`, `hang` or
                `notice` event; without one, until the next attempt's workers ran)
    recovery    detection -> the next attempt's first step begins

A step is kept when it lies in the final lineage: attempt i's steps up to the step attempt i+1
resumed from (all of the last attempt's steps).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

PARTS = ("waiting", "startup", "training", "rollback", "checkpoint", "detection", "recovery")
DETECTIONS = ("fault", "hang", "notice")


@dataclass
class Attempt:
    started: float                      # the `worker` event (or `started`, when there is no worker event)
    from_step: int = 0
    steps: list[tuple[float, int, float]] = field(default_factory=list)   # (end, step, duration)
    checkpoints: list[tuple[float, int, float]] = field(default_factory=list)  # (end, step, duration)


@dataclass(frozen=True)
class Goodput:
    wall_s: float
    parts: Mapping[str, float]
    attempts: int
    steps_redone: int
    faults: tuple[Mapping[str, Any], ...]   # per failure: detection_s, recovery_s, redone steps, reason

    @property
    def ettr(self) -> float | None:
        return self.parts["training"] / self.wall_s if self.wall_s > 0 else None

    def to_json(self) -> dict[str, Any]:
        return {"wall_s": round(self.wall_s, 3), "ettr": None if self.ettr is None else round(self.ettr, 4),
                "parts": {k: round(v, 3) for k, v in self.parts.items()}, "attempts": self.attempts,
                "steps_redone": self.steps_redone, "faults": list(self.faults)}


def latest_run(events: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The events of the job's latest run: from its newest `submitted` that was not the
    controller's resubmission after a lost driver (a resubmission continues the same run)."""
    events = sorted(events, key=lambda e: e["time"])
    start = 0
    for index, event in enumerate(events):
        if event["event"] == "submitted" and not event.get("after_lost_driver"):
            start = index
    return events[start:]


def account(events: Iterable[Mapping[str, Any]], now: float) -> Goodput | None:
    """Split the latest run of a job (its history events) into PARTS; None before it was submitted."""
    run = latest_run(events)
    if not run or run[0]["event"] != "submitted":
        return None
    submitted = float(run[0]["time"])
    finished = next((float(e["time"]) for e in run if e["event"] == "finished"), None)
    end = finished if finished is not None else now
    attempts: list[Attempt] = []
    detections: list[tuple[float, str]] = []
    pending_worker: float | None = None
    for event in run:
        kind, at = event["event"], float(event["time"])
        if kind == "worker":
            pending_worker = at
        elif kind == "started":
            attempts.append(Attempt(started=pending_worker if pending_worker is not None else at,
                                    from_step=int(event.get("from_step") or 0)))
            pending_worker = None
        elif kind == "step" and attempts:
            attempts[-1].steps.append((at, int(event["step"]), float(event.get("duration_s") or 0.0)))
        elif kind == "checkpoint" and attempts:
            attempts[-1].checkpoints.append((at, int(event["step"]), float(event.get("duration_s") or 0.0)))
        elif kind in DETECTIONS:
            detections.append((at, str(event.get("reason") or kind)))

    parts = dict.fromkeys(PARTS, 0.0)
    faults: list[dict[str, Any]] = []
    redone = 0
    if not attempts:
        parts["waiting"] = max(0.0, end - submitted)
        return Goodput(end - submitted, parts, 0, 0, ())
    parts["waiting"] = max(0.0, min(attempts[0].started, end) - submitted)
    cursor = attempts[0].started
    for index, attempt in enumerate(attempts):
        following = attempts[index + 1] if index + 1 < len(attempts) else None
        keep_upto = following.from_step if following is not None else None
        saves = sorted(attempt.checkpoints)
        first = True
        for step_end, step, duration in attempt.steps:
            begins = max(cursor, step_end - duration)
            if first:  # the attempt's own start-up: startup for the first, recovery for the others
                parts["startup" if index == 0 else "recovery"] += max(0.0, begins - cursor)
                cursor, first = begins, False
            kept = keep_upto is None or step <= keep_upto
            parts["training" if kept else "rollback"] += max(0.0, step_end - cursor)
            redone += 0 if kept else 1
            cursor = max(cursor, step_end)
            while saves and saves[0][1] <= step:
                save_end, _, save_s = saves.pop(0)
                if save_end > cursor:
                    parts["checkpoint"] += save_end - cursor
                    cursor = save_end
        if following is None:
            break
        # The attempt failed: its last progress -> detection -> the next attempt's first step.
        next_begins = following.started
        if following.steps:
            next_begins = max(following.started, following.steps[0][0] - following.steps[0][2])
        # What ended the attempt: the first detection recorded while it ran. Usually after its last
        # step; a stuck step that still finished while the hang was being handled ends after it.
        seen = [(at, why) for at, why in detections if attempt.started <= at <= following.started]
        detected_at, reason = seen[0] if seen else (following.started, "the job's workers restarted")
        detected_at = min(max(detected_at, cursor), next_begins)
        parts["detection"] += detected_at - cursor
        lost = sum(1 for _, step, _ in attempt.steps if step > following.from_step)
        faults.append({"after_step": attempt.steps[-1][1] if attempt.steps else attempt.from_step,
                       "resumed_from": following.from_step, "steps_redone": lost, "reason": reason,
                       "detection_s": round(detected_at - cursor, 3),
                       "first_step_after_s": round(
                           (following.steps[0][0] if following.steps else next_begins) - cursor, 3)})
        cursor = detected_at
        if not following.steps:
            parts["recovery"] += max(0.0, min(end, next_begins) - cursor)
            cursor = min(end, next_begins)
        # else: the recovery up to its first step is counted as that attempt's start-up above
    tail = max(0.0, end - cursor)
    if finished is None and attempts[-1].steps:
        parts["training"] += tail  # the step in flight
    elif finished is None and len(attempts) > 1:
        parts["recovery"] += tail
    else:
        parts["startup"] += tail
    return Goodput(end - submitted, parts, len(attempts), redone, tuple(faults))


def of_job(storage: str | Path, name: str, now: float) -> Goodput | None:
    from rayfleet.jobs.supervision import history

    return account(history.events(storage, name), now)


def recent(storage: str | Path, now: float, tails: dict[str, Any], within_s: float = 600.0,
           ) -> dict[str, dict[str, Any]]:
    """Goodput of the jobs whose history changed in the last `within_s` (running or just ended):
    what the controller publishes as metrics. `tails` (job -> history.Tail) is the caller's, kept
    between calls, so each call reads only what the histories gained since the last."""
    from rayfleet.jobs.supervision import history

    out = {}
    for name in history.job_names(storage):
        path = history.job_dir(storage, name) / history.FILE
        try:
            if now - path.stat().st_mtime > within_s:
                tails.pop(name, None)
                continue
        except OSError:
            continue
        tail = tails.setdefault(name, history.Tail(path))
        figures = account(tail.read(), now)
        if figures is not None:
            out[name] = figures.to_json()
    return out
