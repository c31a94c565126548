"""Checkpoints: model, optimizer, data position (the step) and RNG state, sharded, written
synchronously or in the background, committed atomically.

A job's folder (`<storage>/jobs/<name>`) holds one Ray Train run folder per submission
(`runs/<submission id>`); checkpoints are written into the current one. Every rank writes its own
shards through torch.distributed.checkpoint (DCP): FSDP2 parameters and moments as the DTensor
shards they are, expert-parallel stacks as shards along the expert dimension
(jobs/worker/sharded_state.py), replicated tensors once; nothing is gathered to one rank. DCP
reads them into any placement: a checkpoint written by 4 FSDP ranks loads into 2 DDP ranks, or
into one process without a process group (evaluation).

Commit: all ranks write into `.tmp-rayfleet-step-N`; DCP's coordinator (rank 0) learns that every
rank's files are written and fsynced before it writes `.metadata`; only then rank 0 writes
`meta.json`, renames the folder into place and writes `COMMITTED`. A reader only ever takes a
committed one, so a crash mid-write leaves the previous checkpoint the newest. A run resumes from
the newest committed checkpoint in its job folder: Ray Train's own record of checkpoints is not
needed (it commits a reported checkpoint only after its controller's next poll, so a crash right
after a report could otherwise lose it), and a checkpoint is reported only once committed.

In the background mode a save copies the state to host memory and returns; a thread writes it
(DCP's async_save, on a gloo group of its own, so its collectives never interleave with
training's) and rank 0 commits when it is written. The next save, and the end of training, wait
for it first. Checkpoints of the earlier unsharded layout still load (jobs/worker/legacy_checkpoint.py).
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemWriter
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from rayfleet.jobs.worker.legacy_checkpoint import is_legacy, load_legacy
from rayfleet.jobs.worker.parallelize import Parallel
from rayfleet.jobs.worker.sharded_state import (SafeLoadPlanner, SafeReader, StagingWriter, describe_experts,
                                                 local_experts)

log = logging.getLogger(__name__)

PREFIX = "rayfleet-step-"  # not Ray Train's "checkpoint_*", which shares the run folder
RUNS = "runs"
MARKER = "COMMITTED"
META = "meta.json"
_NAME = re.compile(rf"^{PREFIX}(\d+)$")


def _step_of(path: Path) -> int | None:
    match = _NAME.match(path.name)
    return int(match.group(1)) if match else None


def checkpoint_dirs(job_dir: Path, committed: bool = True) -> list[Path]:
    """Checkpoints of every run (submission) of a job, oldest step first."""
    found = [p for p in job_dir.glob(f"{RUNS}/*/{PREFIX}*")
             if _step_of(p) is not None and (not committed or (p / MARKER).exists())]
    return sorted(found, key=lambda p: (_step_of(p) or 0, p.stat().st_mtime))


def latest_checkpoint(job_dir: Path) -> Path | None:
    """The newest committed checkpoint of any submission of the job: what a new attempt resumes."""
    found = checkpoint_dirs(job_dir)
    return found[-1] if found else None


def run_dir(job_dir: Path, submission_id: str) -> Path:
    """Ray Train's run folder for one submission; its checkpoints are written here."""
    return job_dir / RUNS / submission_id


def read_meta(path: Path) -> dict[str, Any]:
    return json.loads((path / META).read_text())


@dataclass(frozen=True)
class Saved:
    """A committed checkpoint; `stall_s`: how long its save stopped the caller's training."""

    path: Path
    step: int
    stall_s: float


class Checkpointer:
    """Saves and loads the checkpoints of one placed model and its optimizer. Every rank makes
    one, at the same point (it creates a process group when torch.distributed is initialised)."""

    def __init__(self, par: Parallel, optimizer: torch.optim.Optimizer, background: bool = False) -> None:
        self.par, self.optimizer, self.background = par, optimizer, background
        # DCP's collectives (plans, write results) on a gloo group of their own: the background
        # writer's never interleave with training's, and NCCL-only default groups are fine
        self.group = dist.new_group(backend="gloo") if dist.is_initialized() else None
        self._pending: _Pending | None = None
        # background: one writer for every save, which keeps its host-memory copy of the state
        # between saves, prepared after the first step (sharded_state.StagingWriter)
        self._writer: StagingWriter | None = StagingWriter.preparing(par, optimizer) if background else None

    def save(self, folder: Path, step: int, meta: dict[str, Any]) -> None:
        """Collective: start writing the checkpoint of `step` into `folder`. Synchronous: returns
        once every rank's shards are written (rank 0 has committed it). Background: returns once
        the state is copied to host memory. `finish` returns it, committed."""
        if self._pending is not None:
            raise RuntimeError("the previous checkpoint was not finished")
        started = time.perf_counter()
        path, tmp = folder / f"{PREFIX}{step:08d}", folder / f".tmp-{PREFIX}{step:08d}"
        if self.par.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)  # left by a crash mid-write
            tmp.mkdir(parents=True)
        self._barrier()
        _write_durably(tmp / f"rng-{self.par.rank:05d}.pt", torch.get_rng_state())
        model_state, optim_state = get_state_dict(self.par.model, self.optimizer)
        state = describe_experts(self.par, {"model": model_state, "optim": optim_state})
        # sync_files: DCP fsyncs each rank's files before it reports them written to rank 0
        if self.background:
            if self._writer is None:
                self._writer = StagingWriter(tmp, sync_files=True)
            response = dcp.async_save(state, checkpoint_id=tmp, storage_writer=self._writer,
                                      process_group=self.group, no_dist=self.group is None)
            written: Future = getattr(response, "upload_completion", response)
        else:
            try:
                dcp.save(state, storage_writer=FileSystemWriter(tmp, sync_files=True), process_group=self.group,
                         no_dist=self.group is None)
            except CheckpointException as error:
                raise _failure(f"checkpoint {path} could not be written", error) from error
            written = Future()
            written.set_result(None)
        commit = _Commit(tmp, path, {**meta, "step": step, "world": self.par.world}, self.par.rank == 0)
        written.add_done_callback(commit.when_written)  # rank 0 commits as soon as all is written
        self._pending = _Pending(step, written, commit, time.perf_counter() - started)

    def finish(self) -> Saved | None:
        """Collective: wait for the checkpoint being written (None if none) and return it, committed.
        Raises what the write raised on any rank; the checkpoint is then never committed."""
        pending, self._pending = self._pending, None
        if pending is None:
            return None
        started = time.perf_counter()
        try:
            pending.written.result()
        except CheckpointException as error:
            raise _failure(f"checkpoint {pending.commit.path} could not be written", error) from error
        pending.commit.now()  # no-op unless the callback failed (then it raises here)
        self._barrier()  # every rank returns only once rank 0 has committed
        return Saved(pending.commit.path, pending.step, pending.stall_s + time.perf_counter() - started)

    def load(self, path: Path) -> dict[str, Any]:
        """Collective: load a committed checkpoint, written on any world size and strategy (or in
        the legacy layout), into this model and optimizer; returns its meta."""
        meta = read_meta(path)
        if is_legacy(path):
            load_legacy(path, self.par, self.optimizer, meta.get("world"))
            return meta
        model_state, optim_state = get_state_dict(self.par.model, self.optimizer)
        state = describe_experts(self.par, {"model": model_state, "optim": optim_state})
        try:
            dcp.load(state, storage_reader=SafeReader(path), planner=SafeLoadPlanner(),
                     process_group=self.group, no_dist=self.group is None)
        except CheckpointException as error:
            raise _failure(f"checkpoint {path} could not be loaded", error) from error
        state = local_experts(self.par, state)
        set_state_dict(self.par.model, self.optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optim"])
        if meta.get("world") == self.par.world:  # the same ranks' generators continue
            torch.set_rng_state(torch.load(path / f"rng-{self.par.rank:05d}.pt", weights_only=True))
        return meta

    def _barrier(self) -> None:
        if self.group is not None:
            dist.barrier(group=self.group)


def save_checkpoint(folder: Path, step: int, par: Parallel, optimizer: torch.optim.Optimizer,
                    meta: dict[str, Any]) -> Path:
    """Collective: write and commit one checkpoint synchronously; returns its folder."""
    saver = Checkpointer(par, optimizer)
    saver.save(folder, step, meta)
    saved = saver.finish()
    assert saved is not None
    return saved.path


def load_checkpoint(path: Path, par: Parallel, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Collective: load a committed checkpoint into a model placed for any strategy; returns its meta."""
    return Checkpointer(par, optimizer).load(path)


@dataclass
class _Pending:
    step: int
    written: Future
    commit: _Commit
    stall_s: float  # the caller's time in `save`


class _Commit:
    """Rank 0's commit of one checkpoint, once: meta.json, the rename into place, the marker."""

    def __init__(self, tmp: Path, path: Path, meta: dict[str, Any], committer: bool) -> None:
        self.tmp, self.path, self.meta, self.committer = tmp, path, meta, committer
        self._lock = threading.Lock()
        self._done = not committer

    def when_written(self, written: Future) -> None:
        if written.exception() is not None:
            return  # never committed; `finish` raises the writer's error
        try:
            self.now()
        except Exception:  # raised again by `finish`, which calls `now` once more
            log.exception("committing checkpoint %s failed", self.path)

    def now(self) -> None:
        with self._lock:
            if self._done:
                return
            _write_durably(self.tmp / META, json.dumps(self.meta, indent=1).encode())
            shutil.rmtree(self.path, ignore_errors=True)
            os.replace(self.tmp, self.path)
            _write_durably(self.path / MARKER, str(self.meta["step"]).encode())
            _fsync_folder(self.path.parent)
            self._done = True


def _failure(what: str, error: CheckpointException) -> RuntimeError:
    """DCP's CheckpointException (a BaseException, whose message names only the ranks) as an
    ordinary error naming each rank's cause."""
    causes = "; ".join(f"rank {rank}: {cause[0] if isinstance(cause, tuple) else cause}"
                       for rank, cause in error.failures.items())
    return RuntimeError(f"{what}: {causes}")


def _write_durably(path: Path, content: bytes | torch.Tensor) -> None:
    with open(path, "wb") as handle:
        if isinstance(content, torch.Tensor):
            torch.save(content, handle)
        else:
            handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_folder(folder: Path) -> None:
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def prune(job_dir: Path, keep: int, current_run: Path) -> None:
    """Keep the newest `keep` committed checkpoints of the job; drop leftovers.

    Checkpoints inside the current run are Ray Train's to delete (CheckpointConfig.num_to_keep):
    it records them in its run snapshot and refuses to resume a run whose recorded checkpoints
    have vanished. So this removes only earlier runs' checkpoints, temporaries and uncommitted
    folders.
    """
    committed = checkpoint_dirs(job_dir)
    for old in committed[:-keep] if keep else committed:
        if old.parent != current_run:
            shutil.rmtree(old, ignore_errors=True)
    # Rank 0 prunes right after its own commit, with no save in flight: anything uncommitted now
    # was left by a crash before the marker, and can never be resumed from.
    for stale in job_dir.glob(f"{RUNS}/*/.tmp-{PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    for folder in checkpoint_dirs(job_dir, committed=False):
        if not (folder / MARKER).exists():
            shutil.rmtree(folder, ignore_errors=True)
