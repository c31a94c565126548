"""Sharded checkpoints on real gloo process groups (no Ray): written by N ranks, read on 1 process
without a process group; committed only when every shard is written, so a writer that fails or
a rank killed mid-write leaves the previous checkpoint the newest; an asynchronous save lets
training go on and writes what a synchronous one writes; the unsharded layout of before loads."""
from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch.distributed.checkpoint import FileSystemWriter
from torch.distributed.checkpoint.state_dict import get_state_dict
from torch.distributed.tensor import DTensor
from torch.multiprocessing.spawn import ProcessException

from rayfleet.jobs.client.spec import JobSpec
from rayfleet.jobs.worker import checkpoint
from rayfleet.jobs.worker.sharded_state import describe_experts
from tests.conftest import ROOT
from tests.support.checkpoints import full_state, trainer
from tests.support.distributed import on_ranks

LEGACY = (ROOT / "tests" / "support" / "data" / "fleet-folder-0.1.0" / "fleets" / "upgraded" / "storage" / "jobs"
          / "before-upgrade" / "runs" / "before-upgrade-20261202-183002-280f" / "rayfleet-step-00000006")
STRATEGIES = [("fsdp", "tiny", 1), ("moe", "tiny_moe", 2)]


def job(strategy: str = "ddp", workers: int = 1, ep: int = 1, preset: str = "tiny", steps: int = 2,
        mode: str = "sync", **extra: Any) -> JobSpec:
    return JobSpec.model_validate({
        "name": "t", "pool": "p", "workers": workers, "steps": steps,
        "parallelism": {"strategy": strategy, "expert_parallel": ep}, "model": {"preset": preset},
        "data": {"seq_len": 32, "global_batch": 4}, "checkpoint": {"every": 2, "keep": 5, "mode": mode},
        "optimizer": {"warmup_steps": 2}, **extra})


def single(spec: JobSpec) -> JobSpec:
    """The same job on one process (fsdp's and ddp's one-process models are the plain model)."""
    return spec.model_copy(update={"workers": 1, "parallelism": spec.parallelism.model_copy(
        update={"strategy": "moe" if spec.parallelism.strategy == "moe" else "ddp", "expert_parallel": 1})})


def gathered_state(made: Any) -> dict[str, Any]:
    """Every rank's model and optimizer state made whole by DTensor's own gather (a collective),
    not by DCP: the reference a checkpoint is compared with."""
    model, optim = get_state_dict(made.par.model, made.optimizer)
    state = describe_experts(made.par, {"model": model, "optim": optim})

    def whole(value: Any) -> Any:
        return value.full_tensor().detach().clone() if isinstance(value, DTensor) else (
            value.detach().clone() if torch.is_tensor(value) else value)

    return {"model": {k: whole(v) for k, v in state["model"].items()},
            "optim": {"state": {k: {n: whole(v) for n, v in e.items()} for k, e in state["optim"]["state"].items()},
                      "param_groups": state["optim"]["param_groups"]}}


def assert_same_state(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got["model"].keys() == want["model"].keys()
    for key, value in want["model"].items():
        assert torch.equal(got["model"][key], value), key
    assert got["optim"]["state"].keys() == want["optim"]["state"].keys()
    for key, entry in want["optim"]["state"].items():
        for name, value in entry.items():
            assert torch.equal(torch.as_tensor(got["optim"]["state"][key][name]), torch.as_tensor(value)), (key, name)
    strip = [{k: v for k, v in g.items() if k != "params"} for g in want["optim"]["param_groups"]]
    assert [{k: v for k, v in g.items() if k != "params"} for g in got["optim"]["param_groups"]] == strip


def train_and_gather(rank: int, world: int, spec: JobSpec, storage: str) -> dict[str, Any]:
    made = trainer(spec, Path(storage), rank, world)
    made.train()
    return gathered_state(made)


@pytest.mark.parametrize("strategy,preset,ep", STRATEGIES)
def test_written_by_two_ranks_loads_on_one_process_without_a_process_group(tmp_path: Path, strategy: str,
                                                                             preset: str, ep: int) -> None:
    """FSDP2 shards and expert-parallel shards written by 2 ranks read back on 1 process, with no
    process group (evaluation), into exactly the model and optimizer state the ranks held."""
    spec = job(strategy, 2, ep, preset)
    want = on_ranks(2, train_and_gather, spec, str(tmp_path))
    latest = checkpoint.latest_checkpoint(tmp_path / "jobs" / "t")
    assert latest is not None and checkpoint.read_meta(latest)["world"] == 2
    assert len(list(latest.glob("*.distcp"))) == 2  # each rank wrote its own file
    assert not dist.is_initialized()
    made = trainer(single(spec), tmp_path, submission="eval")
    assert made.checkpointer.load(latest)["step"] == 2
    assert_same_state(full_state(made), want)


def train_then_fail_writing(rank: int, world: int, spec: JobSpec, storage: str) -> list[str]:
    """Checkpoint step 2, then step 4 with rank 1's writer raising mid-write."""
    made = trainer(spec, Path(storage), rank, world)
    made.train()  # steps 1-2, checkpoint 2 committed
    original = FileSystemWriter.write_data

    def failing(self: FileSystemWriter, plan: Any, planner: Any) -> Any:
        if rank == 1:
            raise OSError("disk full (injected)")
        return original(self, plan, planner)

    FileSystemWriter.write_data = failing  # type: ignore[method-assign]
    made.step = 4
    with pytest.raises(RuntimeError, match="rank 1: disk full"):
        made.save()  # synchronous: raises here; asynchronous: at the wait
        made.finish_checkpoint()
    return [p.name for p in checkpoint.checkpoint_dirs(Path(storage) / "jobs" / "t", committed=False)]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_writer_failing_mid_write_leaves_the_previous_checkpoint_the_newest(tmp_path: Path, mode: str) -> None:
    spec = job(workers=2, mode=mode)
    names = on_ranks(2, train_then_fail_writing, spec, str(tmp_path))
    assert names == ["rayfleet-step-00000002"]  # step 4 never renamed into place, never committed
    assert checkpoint.latest_checkpoint(tmp_path / "jobs" / "t").name == "rayfleet-step-00000002"


def train_then_die_writing(rank: int, world: int, spec: JobSpec, storage: str) -> None:
    """Checkpoint step 2, then start step 4's asynchronous save and kill rank 1 inside its writer,
    after it wrote part of a shard file."""
    made = trainer(spec, Path(storage), rank, world)
    made.train()
    original = FileSystemWriter.write_data

    def dying(self: FileSystemWriter, plan: Any, planner: Any) -> Any:
        if rank == 1:
            (Path(self.path) / "__1_0.distcp").write_bytes(b"half a shard")
            os._exit(3)
        return original(self, plan, planner)

    FileSystemWriter.write_data = dying  # type: ignore[method-assign]
    made.step = 4
    made.save()
    made.finish_checkpoint()  # rank 0 waits for rank 1's write results: it is killed with the gang


def test_a_rank_killed_mid_write_leaves_the_previous_checkpoint_the_newest_and_resumes_from_it(tmp_path: Path) -> None:
    spec = job(workers=2, mode="async")
    with pytest.raises(ProcessException):
        on_ranks(2, train_then_die_writing, spec, str(tmp_path))
    job_dir = tmp_path / "jobs" / "t"
    assert [p.name for p in job_dir.glob("runs/t/.tmp-*")] == [".tmp-rayfleet-step-00000004"]  # the half-written one
    assert checkpoint.latest_checkpoint(job_dir).name == "rayfleet-step-00000002"
    made = trainer(single(spec).model_copy(update={"steps": 4}), tmp_path, submission="again")
    made.train()
    assert made.checkpoint_step == 4 and not list(job_dir.glob("runs/*/.tmp-*"))  # resumed at 2; the leftover pruned


def save_while_training(rank: int, world: int, spec: JobSpec, storage: str) -> dict[str, Any]:
    """At step 2, a synchronous save into one folder and an asynchronous one into another; the
    asynchronous writer is held until this rank has trained a further step."""
    made = trainer(spec, Path(storage), rank, world)
    for _ in range(2):
        made.train_step()
        made.step += 1
    sync_dir, async_dir = Path(storage) / "sync", Path(storage) / "async"
    made.checkpointer.background = False
    made.checkpointer.save(sync_dir, 2, {})
    made.checkpointer.finish()
    original, gate = FileSystemWriter.write_data, threading.Event()

    def held(self: FileSystemWriter, plan: Any, planner: Any) -> Any:
        gate.wait()
        return original(self, plan, planner)

    FileSystemWriter.write_data = held  # type: ignore[method-assign]
    made.checkpointer.background = True
    made.checkpointer.save(async_dir, 2, {})
    pending = made.checkpointer._pending
    before = {k: v.detach().clone() for k, v in made.par.model.state_dict().items()}
    made.train_step()  # a training step (with its collectives) while the checkpoint is being written
    made.step += 1
    changed = any(not torch.equal(before[k], v) for k, v in made.par.model.state_dict().items())
    unwritten = pending is not None and not pending.written.done() and not (async_dir / checkpoint.MARKER).exists()
    gate.set()
    saved = made.checkpointer.finish()
    return {"changed": changed, "unwritten": unwritten, "path": str(saved.path) if saved else None}


@pytest.mark.parametrize("strategy,preset,ep", STRATEGIES)
def test_an_async_save_lets_training_go_on_and_writes_what_a_sync_save_writes(tmp_path: Path, strategy: str,
                                                                            preset: str, ep: int) -> None:
    spec = job(strategy, 2, ep, preset, mode="async")
    seen = on_ranks(2, save_while_training, spec, str(tmp_path))
    assert seen["changed"] and seen["unwritten"]  # the step ran, and changed the weights, before the write
    sync_path = tmp_path / "sync" / "rayfleet-step-00000002"
    async_path = Path(seen["path"])
    assert (async_path / checkpoint.MARKER).exists()
    states = []
    for path in (sync_path, async_path):
        made = trainer(single(spec), tmp_path, submission=path.parent.name)
        made.checkpointer.load(path)
        states.append(full_state(made))
    assert_same_state(states[1], states[0])


def host_storages(state: dict[str, Any]) -> list[int]:
    """Where each tensor of a host copy keeps its values (a DTensor's: its local tensor's)."""
    found: list[int] = []

    def visit(value: Any) -> None:
        if isinstance(value, dict):
            for item in value.values():
                visit(item)
        elif isinstance(value, DTensor):
            found.append(value.to_local().untyped_storage().data_ptr())
        elif torch.is_tensor(value):
            found.append(value.untyped_storage().data_ptr())

    visit(state)
    return found


def prepare_then_save(rank: int, world: int, spec: JobSpec, storage: str) -> dict[str, Any]:
    """Two steps, then an asynchronous save; what the host copy was prepared as after the first
    step, and where the save staged the state."""
    made = trainer(spec, Path(storage), rank, world)
    writer = made.checkpointer._writer
    assert writer is not None and writer._preparing is None and writer.state_dict_cache is None
    made.train_step()
    made.step += 1
    assert writer._preparing is not None  # started by the optimizer's first step
    prepared = writer._preparing.result()
    where = host_storages(prepared)
    made.train_step()
    made.step += 1
    made.save()
    reused = writer.state_dict_cache is prepared and host_storages(writer.state_dict_cache) == where
    made.finish_checkpoint()
    return {"reused": reused, "tensors": len(where), "state": gathered_state(made)}


def train_two_steps(rank: int, world: int, spec: JobSpec, storage: str) -> dict[str, Any]:
    made = trainer(spec, Path(storage), rank, world)
    for _ in range(2):
        made.train_step()
        made.step += 1
    return gathered_state(made)


@pytest.mark.parametrize("strategy,preset,ep", STRATEGIES)
def test_the_host_copy_is_prepared_beside_training_and_the_first_save_copies_into_it(
        tmp_path: Path, strategy: str, preset: str, ep: int) -> None:
    spec = job(strategy, 2, ep, preset, mode="async")
    seen = on_ranks(2, prepare_then_save, spec, str(tmp_path / "async"))
    assert seen["reused"] and seen["tensors"] > 0  # no allocation in the first save: the prepared storage
    latest = checkpoint.latest_checkpoint(tmp_path / "async" / "jobs" / "t")
    made = trainer(single(spec), tmp_path / "async", submission="eval")
    made.checkpointer.load(latest)
    assert_same_state(full_state(made), seen["state"])  # what was staged into it is what was written
    # preparing reads the optimizer's state after its first step, and changes no step
    assert_same_state(seen["state"], on_ranks(2, train_two_steps, job(strategy, 2, ep, preset), str(tmp_path / "sync")))


def train_and_record_reports(rank: int, world: int, spec: JobSpec, storage: str) -> list[tuple[int, bool]]:
    made = trainer(spec, Path(storage), rank, world)
    reports: list[tuple[int, bool]] = []

    def report(metrics: dict[str, Any], path: Path) -> None:
        reports.append((metrics["step"], (path / checkpoint.MARKER).exists()))

    made.train(report=report)
    return reports


def test_async_checkpoints_are_reported_only_once_committed_and_the_last_before_the_end(tmp_path: Path) -> None:
    """Each asynchronous checkpoint is reported, committed, at the next checkpoint or the end; its
    history event (goodput's "checkpoint" time) comes when training goes on, before the next step."""
    reports = on_ranks(2, train_and_record_reports, job(workers=2, steps=6, mode="async"), str(tmp_path))
    assert reports == [(2, True), (4, True), (6, True)]
    assert checkpoint.latest_checkpoint(tmp_path / "jobs" / "t").name == "rayfleet-step-00000006"
    events = [json.loads(line) for line in (tmp_path / "jobs" / "t" / "history.jsonl").read_text().splitlines()]
    order = [(e["event"], e["step"]) for e in sorted(events, key=lambda e: e["time"]) if e["event"] in ("step", "checkpoint")]
    assert order == [("step", 1), ("step", 2), ("checkpoint", 2), ("step", 3), ("step", 4), ("checkpoint", 4),
                     ("step", 5), ("step", 6), ("checkpoint", 6)]


def test_a_checkpoint_of_the_unsharded_layout_resumes(tmp_path: Path) -> None:
    """The checkpoint a job of rayfleet 0.1.0 wrote (model.pt, optim.pt, rng.pt by rank 0) loads into
    today's trainer: its weights exactly, its step, and training goes on from it."""
    spec = JobSpec.model_validate({"name": "before-upgrade", "pool": "cpu", "workers": 1, "steps": 8,
                                   "model": {"preset": "tiny"}, "data": {"seq_len": 64, "global_batch": 4},
                                   "optimizer": {"warmup_steps": 2}, "checkpoint": {"every": 3}})
    folder = tmp_path / "jobs" / spec.name / "runs" / "old"
    shutil.copytree(LEGACY, folder / LEGACY.name)
    made = trainer(spec, tmp_path, submission="new")
    meta = made.checkpointer.load(folder / LEGACY.name)
    assert meta["step"] == 6
    weights = torch.load(LEGACY / "model.pt", weights_only=True)
    assert all(torch.equal(made.par.model.state_dict()[k], v) for k, v in weights.items())
    made = trainer(spec, tmp_path, submission="new")
    made.train()
    assert made.checkpoint_step == 8 and (checkpoint.latest_checkpoint(tmp_path / "jobs" / spec.name)
                                          == folder.parent / "new" / "rayfleet-step-00000008")
