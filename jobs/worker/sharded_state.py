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
import pickle
from typing import Any

import torch
from torch.distributed._state_dict_utils import _copy_state_dict, _create_cpu_state_dict
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.planner import ReadItem
from torch.distributed.tensor import DTensor, Replicate, Shard

from rayfleet.jobs.worker.parallelize import Parallel
from rayfleet.model import expert_parameter_names

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
    The copy must not be reused before the save that wrote from it has finished."""

    def stage(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        if self.state_dict_cache is None:
            self.state_dict_cache = _create_cpu_state_dict(state_dict, pin_memory=torch.cuda.is_available())
        return _copy_state_dict(state_dict, self.state_dict_cache)


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
