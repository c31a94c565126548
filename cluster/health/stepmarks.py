"""A training rank's step counters, in a small shared-memory file its node's health agent reads on demand.

The rank writes the step it last started and the step it last finished, with their times, into a
memory-mapped file named by its pid: a store to mapped memory, no system call, no host sync and
no network write per step. The agent reads the file when the controller asks why a job hangs,
which works as well when the rank is stopped, stuck in a kernel call or spinning: the counters
are exact at that moment, where the GCS beats (one write a second at most) lag by a step.

Writer (jobs/worker/loop.py) and reader (cluster/health/agent.py) share this module, so the format
is defined once. The file lives in /dev/shm (or the temp folder where there is none), which a
Ray node's processes share on every provider (one machine, one EC2 instance, one pod).
"""
from __future__ import annotations

import mmap
import os
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

FORMAT = struct.Struct("<qqqdd")  # version, started step, finished step, started at, finished at
PREFIX = "rayfleet-steps-"


def folder() -> Path:
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


def path_of(pid: int) -> Path:
    return folder() / f"{PREFIX}{pid}"


class StepMarks:
    """This process's counters. `version` grows on every write; a reader that sees it change
    across its read reads again (the writer is one thread)."""

    def __init__(self) -> None:
        self.path = path_of(os.getpid())
        with open(self.path, "w+b") as handle:
            handle.write(b"\0" * FORMAT.size)
            handle.flush()
            self._map = mmap.mmap(handle.fileno(), FORMAT.size)
        self._version = 0
        self._started, self._finished = -1, -1
        self._started_at = self._finished_at = 0.0
        self._write()

    def started(self, step: int) -> None:
        self._started, self._started_at = step, time.time()
        self._write()

    def finished(self, step: int) -> None:
        self._finished, self._finished_at = step, time.time()
        self._write()

    def _write(self) -> None:
        self._version += 1
        FORMAT.pack_into(self._map, 0, self._version, self._started, self._finished, self._started_at,
                         self._finished_at)

    def close(self) -> None:
        """Remove the file (a killed process leaves it; `sweep` removes those of dead pids)."""
        try:
            self._map.close()
            self.path.unlink(missing_ok=True)
        except OSError:
            pass


def read(pid: int, attempts: int = 5) -> dict[str, Any] | None:
    """The counters of process `pid`, or None when it keeps none (not a training rank, or gone).
    Two equal reads in a row are one consistent record (a write between them changes `version`)."""
    for _ in range(attempts):
        try:
            first, second = path_of(pid).read_bytes(), path_of(pid).read_bytes()
        except OSError:
            return None
        if len(first) < FORMAT.size:
            return None
        if first == second:
            _, started, finished, started_at, finished_at = FORMAT.unpack_from(first)
            return {"started": started, "finished": finished, "started_at": started_at,
                    "finished_at": finished_at}
    return None


def sweep(alive: Any = None, prefix: str = PREFIX) -> int:
    """Remove the files (named `<prefix><pid>` or `<prefix><pid>.<suffix>`) of processes that no
    longer exist, zombies included (a killed rank its parent has not reaped); returns how many."""
    alive = alive or _alive
    removed = 0
    for path in folder().glob(f"{prefix}*"):
        pid = path.name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and not alive(int(pid)):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
