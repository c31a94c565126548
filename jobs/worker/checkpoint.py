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

On S3 (`checkpoint.storage: s3://...` in the job, or `checkpoint_storage` in the fleet;
jobs/worker/checkpoint_s3.py) the same writes go to a node-local folder of each rank's own,
synchronously or in the background as above; each rank then uploads its files under the
checkpoint's prefix, the ranks agree (an all-reduce on the checkpointer's group) that every upload
succeeded, and only then rank 0 puts `meta.json` and the `COMMITTED` object, which is the commit
(S3 has no rename). Loading downloads the committed checkpoint to a node-local folder and reads it
as above. Ray Train keeps no record of checkpoints on S3 (they are reported without one): resuming
never needed it, and its run folder stays in the fleet's storage with the job's history. That is a
choice, not a limit: pyarrow's S3 filesystem, which Ray Train would use, works against moto_server
too (pyarrow 26.0.1 wrote and listed an object there), but it would only add an S3 round trip per
report for a record nothing reads.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemWriter
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from rayfleet.jobs.client.spec import JobSpec
from rayfleet.jobs.contract import RunInfo
from rayfleet.jobs.worker import checkpoint_s3
from rayfleet.jobs.worker.checkpoint_s3 import S3Path
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

Location = Union[Path, S3Path]
"""A job's checkpoint folder, a run's or a checkpoint's: on a shared path, or a prefix on S3."""


def _step_of(path: Location) -> int | None:
    match = _NAME.match(path.name)
    return int(match.group(1)) if match else None


def home(job_dir: Path, spec: JobSpec, run: RunInfo) -> Location:
    """Where a job's checkpoints live: under an `s3://bucket/prefix` when one is chosen (the job's
    `checkpoint.storage`, else the fleet's `checkpoint_storage`, which its run info carries), else
    in the job's folder of the fleet's storage (`job_dir`), beside its history."""
    storage = spec.checkpoint.storage or run.checkpoint_storage
    if not storage:
        return job_dir
    endpoint = spec.checkpoint.endpoint_url or (None if spec.checkpoint.storage else run.checkpoint_endpoint_url)
    return S3Path.parse(storage, endpoint) / "jobs" / spec.name


def checkpoint_dirs(job_dir: Location, committed: bool = True) -> list[Location]:
    """Checkpoints of every run (submission) of a job, oldest step first."""
    if isinstance(job_dir, S3Path):
        return [checkpoint for checkpoint, _ in _s3_checkpoints(job_dir, committed)]
    found = [p for p in job_dir.glob(f"{RUNS}/*/{PREFIX}*")
             if _step_of(p) is not None and (not committed or (p / MARKER).exists())]
    return sorted(found, key=lambda p: (_step_of(p) or 0, p.stat().st_mtime))


def _s3_checkpoints(job_dir: S3Path, committed: bool) -> list[tuple[S3Path, set[str]]]:
    """Checkpoints under a job's prefix, oldest step first (the marker's time breaks ties), each
    with the names of its objects; one paginated LIST for the whole job."""
    found: dict[str, set[str]] = {}
    written: dict[str, float] = {}
    for key, modified in checkpoint_s3.objects(job_dir / RUNS).items():
        parts = key.split("/")
        if len(parts) == 3 and _NAME.match(parts[1]):
            folder = f"{parts[0]}/{parts[1]}"
            found.setdefault(folder, set()).add(parts[2])
            if parts[2] == MARKER:
                written[folder] = modified.timestamp()
    chosen = [(folder, names) for folder, names in found.items() if not committed or MARKER in names]
    chosen.sort(key=lambda item: (_step_of(S3Path("", item[0])) or 0, written.get(item[0], 0.0)))
    return [(job_dir / RUNS / folder, names) for folder, names in chosen]


def latest_checkpoint(job_dir: Location) -> Location | None:
    """The newest committed checkpoint of any submission of the job: what a new attempt resumes."""
    found = checkpoint_dirs(job_dir)
    return found[-1] if found else None


def run_dir(job_dir: Location, submission_id: str) -> Location:
    """One submission's run folder (Ray Train's, on a shared path); its checkpoints are written here."""
    return job_dir / RUNS / submission_id


def read_meta(path: Location) -> dict[str, Any]:
    if isinstance(path, S3Path):
        return json.loads(checkpoint_s3.get(path / META))
    return json.loads((path / META).read_text())


@dataclass(frozen=True)
class Saved:
    """A committed checkpoint; `stall_s`: how long its save stopped the caller's training."""

    path: Location
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
        self._uploader: ThreadPoolExecutor | None = None  # S3: uploads after a background write

    def save(self, folder: Location, step: int, meta: dict[str, Any]) -> None:
        """Collective: start writing the checkpoint of `step` into `folder`. Synchronous: returns
        once every rank's shards are written (rank 0 has committed it). Background: returns once
        the state is copied to host memory. `finish` returns it, committed."""
        if self._pending is not None:
            raise RuntimeError("the previous checkpoint was not finished")
        started = time.perf_counter()
        path = folder / f"{PREFIX}{step:08d}"
        remote = isinstance(path, S3Path)
        tmp = self._empty_folder(path)
        self._barrier()
        _write_durably(tmp / f"rng-{self.par.rank:05d}.pt", torch.get_rng_state())
        model_state, optim_state = get_state_dict(self.par.model, self.optimizer)
        state = describe_experts(self.par, {"model": model_state, "optim": optim_state})
        # sync_files: DCP fsyncs each rank's files before it reports them written to rank 0
        # (not needed for a staging folder on S3, whose durability is the upload's)
        if self.background:
            if self._writer is None:
                self._writer = StagingWriter(tmp, sync_files=not remote)
            response = dcp.async_save(state, checkpoint_id=tmp, storage_writer=self._writer,
                                      process_group=self.group, no_dist=self.group is None)
            written: Future = getattr(response, "upload_completion", response)
        else:
            try:
                dcp.save(state, storage_writer=FileSystemWriter(tmp, sync_files=not remote), process_group=self.group,
                         no_dist=self.group is None)
            except CheckpointException as error:
                raise _failure(f"checkpoint {path} could not be written", error) from error
            written = Future()
            written.set_result(None)
        full_meta = {**meta, "step": step, "world": self.par.world}
        commit: _Commit
        if isinstance(path, S3Path):
            written = self._uploaded(written, tmp, path)
            commit = _ObjectCommit(path, full_meta, self.par.rank == 0)
        else:
            commit = _FolderCommit(tmp, path, full_meta, self.par.rank == 0)
        written.add_done_callback(commit.when_written)  # rank 0 commits as soon as all is written
        self._pending = _Pending(step, written, commit, time.perf_counter() - started)

    def _empty_folder(self, path: Location) -> Path:
        """The folder this rank writes checkpoint `path` into, emptied of what a crash mid-write
        left: on a shared path, the one temporary folder of all ranks (rank 0 makes it); for S3,
        a node-local folder of each rank's own (and rank 0 deletes a crashed attempt's partial
        upload of this step)."""
        if isinstance(path, S3Path):
            tmp = checkpoint_s3.local_folder(path, "staging", self.par.rank)
            if self.par.rank == 0:
                checkpoint_s3.delete_prefix(path)
        else:
            tmp = path.parent / f".tmp-{path.name}"
        if self.par.rank == 0 or isinstance(path, S3Path):
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        return tmp

    def _uploaded(self, written: Future, tmp: Path, path: S3Path) -> Future:
        """A future done once every rank has uploaded its files of `path` (failed if any rank's
        write or upload failed): at once when saving synchronously, else on a thread of its own."""
        if not self.background:
            uploaded: Future = Future()
            try:
                self._upload(written, tmp, path)
                uploaded.set_result(None)
            except BaseException as error:  # CheckpointException is a BaseException
                uploaded.set_exception(error)
            return uploaded
        if self._uploader is None:
            self._uploader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rayfleet-upload")
        return self._uploader.submit(self._upload, written, tmp, path)

    def _upload(self, written: Future, tmp: Path, path: S3Path) -> None:
        """Wait for this rank's DCP write, upload its files, and agree with every rank (a
        collective on the checkpointer's group) that all uploads succeeded; raises if one did not.
        DCP's own failures are raised on every rank alike, before the agreement."""
        written.result()
        failure: BaseException | None = None
        try:
            checkpoint_s3.upload_folder(tmp, path)
        except Exception as error:  # reported to every rank, raised below
            failure = error
            log.warning("rank %d could not upload checkpoint %s: %s", self.par.rank, path, error)
        finally:
            checkpoint_s3.discard(tmp)
        failed = _ranks_failed(failure is not None, self.par.rank, self.par.world, self.group)
        if failed:
            cause = f"rank {self.par.rank}: {failure}" if failure is not None else "see that rank's log"
            raise RuntimeError(f"checkpoint {path} could not be uploaded by rank(s) {failed} ({cause})")

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

    def load(self, path: Location) -> dict[str, Any]:
        """Collective: load a committed checkpoint, written on any world size and strategy (or in
        the legacy layout), into this model and optimizer; returns its meta."""
        if isinstance(path, S3Path):
            return self._load_from_s3(path)
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

    def _load_from_s3(self, path: S3Path) -> dict[str, Any]:
        """Download the checkpoint (less the other ranks' RNG files) to this rank's node-local
        folder, load it from there, and delete the copy."""
        local = checkpoint_s3.local_folder(path, "loading", self.par.rank)
        shutil.rmtree(local, ignore_errors=True)
        mine = f"rng-{self.par.rank:05d}.pt"
        try:
            checkpoint_s3.download_folder(path, local, lambda name: not name.startswith("rng-") or name == mine)
            return self.load(local)
        finally:
            checkpoint_s3.discard(local)

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
    """Rank 0's commit of one checkpoint, once, when every rank's part is written."""

    def __init__(self, path: Location, meta: dict[str, Any], committer: bool) -> None:
        self.path, self.meta, self.committer = path, meta, committer
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
            self._apply()
            self._done = True

    def _apply(self) -> None:
        raise NotImplementedError


class _FolderCommit(_Commit):
    """On a shared path: meta.json, the rename into place, the marker."""

    def __init__(self, tmp: Path, path: Path, meta: dict[str, Any], committer: bool) -> None:
        super().__init__(path, meta, committer)
        self.tmp = tmp

    def _apply(self) -> None:
        assert isinstance(self.path, Path)
        _write_durably(self.tmp / META, json.dumps(self.meta, indent=1).encode())
        shutil.rmtree(self.path, ignore_errors=True)
        os.replace(self.tmp, self.path)
        _write_durably(self.path / MARKER, str(self.meta["step"]).encode())
        _fsync_folder(self.path.parent)


class _ObjectCommit(_Commit):
    """On S3, where every rank's objects are uploaded already: meta.json, then the marker."""

    def _apply(self) -> None:
        assert isinstance(self.path, S3Path)
        checkpoint_s3.put(self.path / META, json.dumps(self.meta, indent=1).encode())
        checkpoint_s3.put(self.path / MARKER, str(self.meta["step"]).encode())


def _ranks_failed(failed: bool, rank: int, world: int, group: Any) -> list[int]:
    """Collective over `group` (none: one process): the ranks whose part failed."""
    flags = torch.zeros(world, dtype=torch.int32)
    flags[rank] = int(failed)
    if group is not None:
        dist.all_reduce(flags, group=group)
    return [r for r in range(world) if flags[r]]


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


def prune(job_dir: Location, keep: int, current_run: Location) -> None:
    """Keep the newest `keep` committed checkpoints of the job; drop leftovers.

    On a shared path, checkpoints inside the current run are Ray Train's to delete
    (CheckpointConfig.num_to_keep): it records them in its run snapshot and refuses to resume a run
    whose recorded checkpoints have vanished. So this removes only earlier runs' checkpoints,
    temporaries and uncommitted folders. Ray Train records none on S3: there this keeps `keep` in all.
    """
    if isinstance(job_dir, S3Path):
        _prune_s3(job_dir, keep)
        return
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


def _prune_s3(job_dir: S3Path, keep: int) -> None:
    """Delete all but the newest `keep` committed checkpoints and every uncommitted one (left by a
    crash mid-upload: rank 0 prunes with no save in flight)."""
    found = _s3_checkpoints(job_dir, committed=False)
    committed = [path for path, names in found if MARKER in names]
    kept = set(committed[-keep:]) if keep else set()
    for path, names in found:
        if path not in kept:
            checkpoint_s3.delete_prefix(path)
