"""A placed model's state as torch.distributed.checkpoint (DCP) sees it, and DCP's reading made safe.

Every rank hands DCP its own part of the state: FSDP2 parameters and moments are DTensors already;
an expert-parallel rank's expert stacks are plain tensors holding experts [first, first + local),
so they are described to DCP as DTensors sharded along the expert dimension over a
(replica, expert) mesh. DCP then writes each shard once, from the rank holding it, and reads
into any other placement (N ranks -> M ranks, or one process without a process group).

DCP's own reader unpickles its `.metadata` file with `pickle.load` and any non-tensor value with
`torch.load(weights_only=False)`: whoever can write the storage could run code on every rank.
`SafeReader` unpickles the metadata with an allow-list of DCP's metadata classes, and
`SafeLoadPlanner` loads values with `weights_only=True`.
"""
from __future__ import annotations

import dataclasses
import enum
import io
import logging
import os
import pickle
import threading
from concurrent.futures import Future
from typing import Any

import torch
from torch.distributed._state_dict_utils import (CompanionMismatch, _copy_state_dict, _create_cpu_state_dict,
                                                 _iterate_state_dict)
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.planner import ReadItem
from torch.distributed.checkpoint.state_dict import get_state_dict
from torch.distributed.tensor import DTensor, Replicate, Shard

from rayfleet.jobs.worker.parallelize import Parallel
from rayfleet.model import expert_parameter_names

log = logging.getLogger(__name__)

# Where DCP's metadata classes live (Metadata, TensorStorageMetadata, ChunkStorageMetadata,
# TensorProperties, BytesStorageMetadata, MetadataIndex, StorageMeta; _StorageInfo).
_METADATA_MODULES = ("torch.distributed.checkpoint.metadata", "torch.distributed.checkpoint.filesystem")


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles only DCP's metadata dataclasses and enums, torch.Size, torch's dtypes and
    memory formats, layouts by name and paths; anything else is refused before it is called.
    (What a metadata file refers to: `pickletools.genops` over one.)"""

    def find_class(self, module: str, name: str) -> Any:
        if module in _METADATA_MODULES:
            found = getattr(__import__(module, fromlist=[name]), name, None)
            if isinstance(found, type) and (dataclasses.is_dataclass(found) or issubclass(found, enum.Enum)):
                return found
        if module == "torch":
            found = getattr(torch, name, None)
            if found is torch.Size or isinstance(found, (torch.dtype, torch.layout, torch.memory_format)):
                return found
        if (module, name) == ("torch.serialization", "_get_layout"):  # how torch pickles a layout: by name
            return torch.serialization._get_layout
        if (module, name) in (("pathlib", "PosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "Path")):
            import pathlib  # StorageMeta.checkpoint_id: a path built from a string, nothing run
            return getattr(pathlib, name)
        raise pickle.UnpicklingError(f"refused to unpickle {module}.{name} from checkpoint metadata")


class SafeReader(FileSystemReader):
    """DCP's file-system reader with the metadata unpickled through an allow-list."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        rank = kwargs.get("rank")
        with self.fs.create_stream(self._get_metadata_path(rank), "rb") as stream:
            metadata = _MetadataUnpickler(stream).load()
        if not isinstance(metadata, Metadata):
            raise pickle.UnpicklingError("checkpoint metadata is not DCP metadata")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's load planner with every non-tensor value (optimizer hyper-parameters) loaded with
    weights_only=True."""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        loaded = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
        else:
            self.state_dict[read_item.dest_index.fqn] = loaded


class StagingWriter(FileSystemWriter):
    """DCP's file-system writer that keeps one host-memory copy of the state for every save
    (DCP's own cache pins it, which needs CUDA): an asynchronous save's stall is one copy into it.
    The copy must not be reused before the save that wrote from it has finished.

    `prepare` allocates that copy and faults its pages in on a thread of its own, before the first
    save: allocating it in the first save's stall (torch's `_create_cpu_state_dict`, which on CPU
    also deep-copies every DTensor) made that save 2.0 s against 0.44 s for later ones (moe_8x,
    2 ranks, bench/checkpoint_stall.py)."""

    def __init__(self, path: str | os.PathLike = ".", **kwargs: Any) -> None:
        super().__init__(path, **kwargs)  # each save names its folder (dcp's checkpoint_id)
        self._preparing: Future[dict[str, Any]] | None = None

    @classmethod
    def preparing(cls, par: Parallel, optimizer: torch.optim.Optimizer) -> StagingWriter:
        """A writer (sync_files: DCP fsyncs each rank's files before reporting them written) whose
        host copy is prepared after the optimizer's first step, when its moments exist: shaped
        like `saved_state(par, optimizer)` then (reading it costs milliseconds; the allocation and
        faulting run beside training)."""
        writer = cls(sync_files=True)
        hook: list[Any] = []

        def after_step(*_: Any) -> None:
            hook.pop().remove()
            writer.prepare(saved_state(par, optimizer))

        hook.append(optimizer.register_step_post_hook(after_step))
        return writer

    def prepare(self, state_dict: dict[str, Any]) -> None:
        """Start allocating, in the background, a host copy shaped like `state_dict` and faulting
        its pages in; reads no values, so training may go on meanwhile. The next `stage` waits
        for it and copies into it."""
        self._preparing = Future()
        threading.Thread(target=_settle, args=(self._preparing, host_copy, state_dict), name="staging-prepare",
                         daemon=True).start()

    def stage(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        if self._preparing is not None:
            self.state_dict_cache, self._preparing = self._preparing.result(), None
        if self.state_dict_cache is not None:
            try:
                return _copy_state_dict(state_dict, self.state_dict_cache)
            except CompanionMismatch:  # prepared for another shape of state: allocate afresh
                log.warning("the prepared host copy does not match the state saved; allocating another")
        self.state_dict_cache = _create_cpu_state_dict(state_dict, pin_memory=torch.cuda.is_available())
        return _copy_state_dict(state_dict, self.state_dict_cache)


def _settle(future: Future, fn: Any, *args: Any) -> None:
    try:
        future.set_result(fn(*args))
    except BaseException as error:  # raised to the save that waits for it
        future.set_exception(error)


def host_copy(state_dict: dict[str, Any]) -> dict[str, Any]:
    """A state dict shaped like `state_dict` whose tensors are new zeroed host tensors (pinned
    with CUDA), written once so their pages are faulted in now rather than in a save's copy; a
    DTensor's copy is a DTensor of the same mesh and placements around a new local tensor.
    Scalars and 0-dim DTensors as torch's `_create_cpu_state_dict` makes them."""
    pin = torch.cuda.is_available()

    def tensor(obj: torch.Tensor, *_: Any) -> torch.Tensor:
        if obj.dim() == 0:
            return torch.tensor(0, dtype=obj.dtype)
        made = torch.zeros(obj.size(), dtype=obj.dtype)  # zeros: every page written once
        return made.pin_memory() if pin and made.numel() else made

    def dtensor(obj: DTensor, *_: Any) -> DTensor:
        if obj.dim() == 0:
            return obj
        return DTensor.from_local(tensor(obj.to_local()), obj.device_mesh, obj.placements, run_check=False,
                                  shape=obj.shape, stride=obj.stride())

    def refuse(obj: Any, *_: Any) -> Any:
        raise TypeError(f"no host copy of a {type(obj).__name__}: the state holds DTensors and tensors")

    return _iterate_state_dict(state_dict, refuse, dtensor, tensor)


def saved_state(par: Parallel, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The state a checkpoint of `par`'s model and `optimizer` holds, as DCP is handed it."""
    model_state, optim_state = get_state_dict(par.model, optimizer)
    return describe_experts(par, {"model": model_state, "optim": optim_state})


def describe_experts(par: Parallel, state: dict[str, Any]) -> dict[str, Any]:
    """`state` ({"model": ..., "optim": ...} of get_state_dict) with every expert-parallel tensor
    wrapped as a DTensor over `par.expert_mesh` (sharing its storage: DCP loads into it in place)."""
    if par.expert_mesh is None:
        return state
    place = [Replicate(), Shard(0)]  # the mesh's dims: (replica, expert), parallelize.py
    names = set(expert_parameter_names(par.model))
    model = {key: DTensor.from_local(value, par.expert_mesh, place, run_check=False) if key in names else value
             for key, value in state["model"].items()}
    moments = {}
    for key, entry in state["optim"]["state"].items():
        moments[key] = {k: DTensor.from_local(v, par.expert_mesh, place, run_check=False)
                        if key in names and torch.is_tensor(v) and v.dim() > 0 else v
                        for k, v in entry.items()}
    return {"model": model, "optim": {**state["optim"], "state": moments}}


def local_experts(par: Parallel, state: dict[str, Any]) -> dict[str, Any]:
    """The inverse of `describe_experts`: each wrapped expert tensor as this rank's local shard
    (the form set_state_dict takes for a model whose experts are plain tensors)."""
    if par.expert_mesh is None:
        return state

    def local(value: Any) -> Any:
        return value.to_local() if isinstance(value, DTensor) else value

    model = {key: local(value) for key, value in state["model"].items()}
    moments = {key: {k: local(v) for k, v in entry.items()} for key, entry in state["optim"]["state"].items()}
    return {"model": model, "optim": {**state["optim"], "state": moments}}
