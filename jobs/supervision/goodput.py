"""Goodput accounting, pure: where a job's wall-clock time went, and its ETTR.

ETTR (effective training time ratio, as in Meta's study of its research clusters, "Revisiting
Reliability in Large-Scale Machine Learning Research Clusters", 2024) is the share of a job's
wall-clock time that produced training progress that was kept.

The job's durable history (jobs/supervision/history.py) holds what this needs, recorded as it happens:
`submitted`, `driver` (the entrypoint runs), `worker` (rank 0 of an attempt runs: the gang was
placed and its processes started), `started` (the attempt resumed from a step), `step` (rank 0
finished a step: its number and duration), `compiled` (that step compiled the model),
`checkpoint` (a save and its duration), `notice`
(the job checkpointed for a node going away), `fault` and `hang` (the controller saw a node of
the job fail, or the job stop making progress), `finished`.

The wall time [submitted, finished or now) is cut into consecutive intervals, each given to one
part, so the parts add up to the wall time exactly:

    waiting     submitted -> the first attempt's workers run (queued, gang not placed, processes starting)
    startup     the first attempt's workers run -> its first step begins (model, process group,
                checkpoint load); and the last step's end -> the job's end (teardown)
    training    steps whose result was kept: a step's interval runs from the end of the step (or
                checkpoint) before it to its own end
    compile     an attempt's step that compiled the model (torch.compile), kept or not
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

PARTS = ("waiting", "startup", "compile", "training", "rollback", "checkpoint", "detection", "recovery")
DETECTIONS = ("fault", "hang", "notice")


@dataclass
class Attempt:
    started: float                      # the `worker` event (or `started`, when there is no worker event)
    from_step: int = 0
    steps: list[tuple[float, int, float]] = field(default_factory=list)   # (end, step, duration)
    checkpoints: list[tuple[float, int, float]] = field(default_factory=list)  # (end, step, duration)
    compiled: set[int] = field(default_factory=set)  # steps that compiled the model


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


def attempts_of(run: list[Mapping[str, Any]]) -> tuple[list[Attempt], list[tuple[float, str]]]:
    """A run's attempts (with their steps and checkpoints) and its detections (time, reason)."""
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
        elif kind == "compiled" and attempts:
            attempts[-1].compiled.add(int(event["step"]))
        elif kind == "checkpoint" and attempts:
            attempts[-1].checkpoints.append((at, int(event["step"]), float(event.get("duration_s") or 0.0)))
        elif kind in DETECTIONS:
            detections.append((at, str(event.get("reason") or kind)))
    return attempts, detections


@dataclass
class Ledger:
    """The walk along a run's wall time: `cursor` is how far it has been given to parts."""
    cursor: float
    parts: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PARTS, 0.0))
    redone: int = 0

    def give(self, part: str, until: float) -> None:
        self.parts[part] += max(0.0, until - self.cursor)
        self.cursor = max(self.cursor, until)

    def attempt(self, attempt: Attempt, first_attempt: bool, keep_upto: int | None) -> None:
        """Its start-up (startup for the first attempt, recovery for the others), its steps
        (training if kept, rollback if the next attempt redid them) and the checkpoints between."""
        saves = sorted(attempt.checkpoints)
        for index, (step_end, step, duration) in enumerate(attempt.steps):
            if index == 0:
                self.give("startup" if first_attempt else "recovery", max(self.cursor, step_end - duration))
            kept = keep_upto is None or step <= keep_upto
            self.redone += 0 if kept else 1
            self.give("compile" if step in attempt.compiled else "training" if kept else "rollback", step_end)
            while saves and saves[0][1] <= step:
                self.give("checkpoint", saves.pop(0)[0])

    def failure(self, attempt: Attempt, following: Attempt, detections: list[tuple[float, str]],
                end: float) -> dict[str, Any]:
        """The failed attempt's last progress -> detection -> the next attempt's first step."""
        next_begins = following.started
        if following.steps:
            next_begins = max(following.started, following.steps[0][0] - following.steps[0][2])
        # What ended the attempt: the first detection recorded while it ran. Usually after its last
        # step; a stuck step that still finished while the hang was being handled ends after it.
        seen = [(at, why) for at, why in detections if attempt.started <= at <= following.started]
        detected_at, reason = seen[0] if seen else (following.started, "the job's workers restarted")
        last_progress = self.cursor
        detected_at = min(max(detected_at, last_progress), next_begins)
        self.give("detection", detected_at)
        if not following.steps:
            self.give("recovery", min(end, next_begins))
        # else: the recovery up to its first step is counted as that attempt's start-up
        return {"after_step": attempt.steps[-1][1] if attempt.steps else attempt.from_step,
                "resumed_from": following.from_step,
                "steps_redone": sum(1 for _, step, _ in attempt.steps if step > following.from_step),
                "reason": reason, "detection_s": round(detected_at - last_progress, 3),
                "first_step_after_s": round((following.steps[0][0] if following.steps else next_begins)
                                            - last_progress, 3)}


def account(events: Iterable[Mapping[str, Any]], now: float) -> Goodput | None:
    """Split the latest run of a job (its history events) into PARTS; None before it was submitted."""
    run = latest_run(events)
    if not run or run[0]["event"] != "submitted":
        return None
    submitted = float(run[0]["time"])
    finished = next((float(e["time"]) for e in run if e["event"] == "finished"), None)
    end = finished if finished is not None else now
    attempts, detections = attempts_of(run)
    ledger = Ledger(cursor=submitted)
    if not attempts:
        ledger.give("waiting", end)
        return Goodput(end - submitted, ledger.parts, 0, 0, ())
    ledger.give("waiting", min(attempts[0].started, end))
    ledger.cursor = attempts[0].started
    faults = []
    for index, attempt in enumerate(attempts):
        following = attempts[index + 1] if index + 1 < len(attempts) else None
        ledger.attempt(attempt, index == 0, following.from_step if following is not None else None)
        if following is not None:
            faults.append(ledger.failure(attempt, following, detections, end))
    # the rest: the step in flight, a recovery under way, or the job's teardown
    ledger.give("training" if finished is None and attempts[-1].steps else
                "recovery" if finished is None and len(attempts) > 1 else "startup", end)
    return Goodput(end - submitted, ledger.parts, len(attempts), ledger.redone, tuple(faults))


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
