"""Rank 0's per-step goodput events, buffered: a step costs a dict in memory, not a file append.

jobs/supervision/goodput.py needs every step's end time and duration. Each step's event is
stamped when the step ends and kept in memory; the buffer is appended to the job's history in one
write at most every `every_s` seconds, and before any other event the loop records (checkpoint,
notice, compiled) and at the end. Goodput sorts events by their time, so the late write changes
nothing it computes; a worker that dies loses at most `every_s` of step events, which goodput then
counts as detection time.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from rayfleet.jobs.supervision import history


class StepLog:
    def __init__(self, storage: str | Path, job: str, submission_id: str, every_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.storage, self.job, self.submission_id = storage, job, submission_id
        self.every_s = every_s
        self.clock, self.wall = clock, wall
        self.pending: list[dict[str, Any]] = []
        self._flushed = clock()

    def step(self, step: int, duration_s: float) -> None:
        self.pending.append({"time": self.wall(), "event": "step", "submission_id": self.submission_id,
                             "step": step, "duration_s": round(duration_s, 4)})
        if self.clock() - self._flushed >= self.every_s:
            self.flush()

    def flush(self) -> None:
        self._flushed = self.clock()
        lines, self.pending = self.pending, []
        history.record_many(self.storage, self.job, lines)
