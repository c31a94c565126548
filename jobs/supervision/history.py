"""Durable job history: an append-only JSON-lines file per job in the fleet's storage path.

It lives beside the job's checkpoints (`<storage>/jobs/<name>/history.jsonl`), not in Ray, so it
outlives a head restart and a `down`/`up` of the fleet. Each line is one event, e.g. submitted,
started (an attempt, with the step it resumed from), finished (with the final state, step and
loss); jobs/supervision/goodput.py lists them all.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterator

FILE = "history.jsonl"


def job_dir(storage: str | Path, name: str) -> Path:
    """The job's folder: its history and one Ray Train run folder per submission."""
    return Path(storage) / "jobs" / name


def record(storage: str | Path, name: str, event: str, **fields: Any) -> None:
    path = job_dir(storage, name) / FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"time": time.time(), "event": event, "job": name, **fields}, default=str) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())  # one write with O_APPEND: lines from several processes never interleave
    finally:
        os.close(fd)


def record_many(storage: str | Path, name: str, lines: list[dict[str, Any]]) -> None:
    """Append events that carry their own `time` and `event` (buffered by the writer), in one write."""
    if not lines:
        return
    path = job_dir(storage, name) / FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps({"job": name, **line}, default=str) + "\n" for line in lines)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def events(storage: str | Path, name: str) -> list[dict[str, Any]]:
    path = job_dir(storage, name) / FILE
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a crash mid-write
    return out


class Tail:
    """A job's history read incrementally: each `read` parses only the lines appended since the
    last one (a long job writes a line per step; the controller reads it every few seconds)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.events: list[dict[str, Any]] = []

    def read(self) -> list[dict[str, Any]]:
        try:
            size = self.path.stat().st_size
        except OSError:
            return self.events
        if size < self.offset:  # replaced: start over
            self.offset, self.events = 0, []
        if size > self.offset:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                chunk = handle.read(size - self.offset)
            complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits
            self.offset += len(complete)
            for line in complete.splitlines():
                try:
                    self.events.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line cut by a crash mid-write
        return self.events


def job_names(storage: str | Path) -> Iterator[str]:
    root = Path(storage) / "jobs"
    if root.is_dir():
        for folder in sorted(root.iterdir()):
            if (folder / FILE).exists():
                yield folder.name


def summary(storage: str | Path, name: str, read: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The latest submission of a job, folded from its history (`read`: its events, if already read)."""
    latest: dict[str, Any] = {"job": name, "submissions": 0, "restarts": 0}
    carried = 0  # restarts of earlier submissions that the controller resubmitted after a lost driver
    for event in events(storage, name) if read is None else read:
        kind = event["event"]
        if kind == "submitted":
            carried = carried + latest.get("restarts", 0) + 1 if event.get("after_lost_driver") else 0
            latest.update(submission_id=event["submission_id"], submitted_at=event["time"],
                          pool=event.get("pool"), strategy=event.get("strategy"), steps=event.get("steps"),
                          state="PENDING", restarts=carried, attempts=0, final_step=None)
            latest["submissions"] += 1
        elif kind == "started" and event.get("submission_id") == latest.get("submission_id"):
            latest["attempts"] = latest.get("attempts", 0) + 1
            latest["restarts"] = carried + max(0, latest["attempts"] - 1)
            latest["state"] = "RUNNING"
            latest["resumed_from"] = event.get("from_step")
        elif kind == "finished" and event.get("submission_id") == latest.get("submission_id"):
            latest.update(state=event["state"], final_step=event.get("step"), loss=event.get("loss"),
                          finished_at=event["time"], error=event.get("error"))
    return latest
