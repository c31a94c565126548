"""Checkpoints: model, optimizer, data position (the step) and RNG state, in one layout for every
strategy, committed atomically.

The state is saved unsharded and keyed by parameter name, whatever the strategy (DDP, FSDP2 or
expert parallel): a checkpoint written by 4 FSDP ranks loads into 2 DDP ranks or 1 process, which
is what elastic runs and the equivalence tests need. Rank 0 writes into a temporary folder,
renames it into place and then writes `COMMITTED`; a reader only ever takes a committed one. A
run resumes from the newest committed checkpoint in its run folder: Ray Train's own record of
checkpoints is not needed (it commits a reported checkpoint only after its controller's next
poll, so a crash right after a report could otherwise lose it).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from jobs.parallel import Parallel
from model import expert_parameters, gather_full_state_dict, load_full_state_dict

PREFIX = "checkpoint_"
MARKER = "COMMITTED"
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Committed checkpoints, oldest first."""
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.glob(f"{PREFIX}*") if (p / MARKER).exists()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = checkpoint_dirs(run_dir)
    return found[-1] if found else None


def read_meta(path: Path) -> dict[str, Any]:
    return json.loads((path / "meta.json").read_text())


def save_checkpoint(run_dir: Path, step: int, par: Parallel, optimizer: torch.optim.Optimizer,
                    meta: dict[str, Any]) -> Path:
    """Collective: every rank calls it; rank 0 writes. Returns the committed folder."""
    model_state, optim_state = _full_state(par, optimizer)
    rng = [None] * par.world
    if par.world > 1:
        dist.all_gather_object(rng, torch.get_rng_state())
    else:
        rng = [torch.get_rng_state()]
    path = run_dir / f"{PREFIX}{step:08d}"
    if par.rank == 0:
        tmp = run_dir / f".tmp-{PREFIX}{step:08d}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        torch.save(model_state, tmp / "model.pt")
        torch.save(optim_state, tmp / "optim.pt")
        torch.save(rng, tmp / "rng.pt")
        (tmp / "meta.json").write_text(json.dumps({**meta, "step": step, "world": par.world}, indent=1))
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
        with open(path / MARKER, "w") as handle:
            handle.write(str(step))
            handle.flush()
            os.fsync(handle.fileno())
    if par.world > 1:
        dist.barrier()
    return path


def load_checkpoint(path: Path, par: Parallel, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Load a committed checkpoint into a model placed for any strategy; returns its meta."""
    model_state = torch.load(path / "model.pt", map_location="cpu", weights_only=True)
    optim_state = torch.load(path / "optim.pt", map_location="cpu", weights_only=False)
    if par.strategy == "moe" and par.world > 1:
        load_full_state_dict(par.model, model_state)
        set_optimizer_state_dict(par.model, optimizer, _local_expert_optim(par, optim_state))
    else:
        options = StateDictOptions(full_state_dict=True) if par.strategy == "fsdp" else StateDictOptions()
        set_model_state_dict(par.model, model_state, options=options)
        set_optimizer_state_dict(par.model, optimizer, optim_state, options=options)
    meta = read_meta(path)
    rng = torch.load(path / "rng.pt", weights_only=False)
    if meta.get("world") == par.world:
        torch.set_rng_state(rng[par.rank])
    return meta


def prune(run_dir: Path, keep: int) -> None:
    """Keep the newest `keep` committed checkpoints; drop older ones and stale temporaries."""
    committed = checkpoint_dirs(run_dir)
    for old in committed[:-keep] if keep else committed:
        shutil.rmtree(old, ignore_errors=True)
    newest = int(committed[-1].name[len(PREFIX):]) if committed else None
    for stale in run_dir.glob(f".tmp-{PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    for uncommitted in run_dir.glob(f"{PREFIX}*"):
        if not (uncommitted / MARKER).exists() and newest is not None \
                and int(uncommitted.name[len(PREFIX):]) < newest:
            shutil.rmtree(uncommitted, ignore_errors=True)


def _full_state(par: Parallel, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    """Unsharded model and optimizer state keyed by parameter name (collective)."""
    if par.strategy == "moe" and par.world > 1:
        model_state = {k: v.cpu() for k, v in gather_full_state_dict(par.model).items()}
        optim_state = get_optimizer_state_dict(par.model, optimizer)
        return model_state, _gather_expert_optim(par, optim_state)
    options = FULL if par.strategy == "fsdp" else StateDictOptions(cpu_offload=True)
    return (get_model_state_dict(par.model, options=options),
            get_optimizer_state_dict(par.model, optimizer, options=options))


def _expert_names(par: Parallel) -> set[str]:
    ids = {id(p) for p in expert_parameters(par.model)}
    return {name for name, p in par.model.named_parameters() if id(p) in ids}


def _gather_expert_optim(par: Parallel, state: dict[str, Any]) -> dict[str, Any]:
    """Expert shards' Adam moments gathered along the expert dimension, like their weights."""
    experts = _expert_names(par)
    out = {"state": {}, "param_groups": state["param_groups"]}
    for name, entry in state["state"].items():
        full = {}
        for key, value in entry.items():
            if name in experts and torch.is_tensor(value) and value.dim() > 0:
                parts = [torch.empty_like(value) for _ in range(par.expert_ranks)]
                dist.all_gather(parts, value.contiguous(), group=par.ep_group)
                value = torch.cat(parts)
            full[key] = value.cpu() if torch.is_tensor(value) else value
        out["state"][name] = full
    return out


def _local_expert_optim(par: Parallel, state: dict[str, Any]) -> dict[str, Any]:
    """The inverse of `_gather_expert_optim`: this rank's slice of each expert moment."""
    experts = _expert_names(par)
    rank = dist.get_rank(par.ep_group)
    out = {"state": {}, "param_groups": state["param_groups"]}
    for name, entry in state["state"].items():
        local = {}
        for key, value in entry.items():
            if name in experts and torch.is_tensor(value) and value.dim() > 0:
                size = value.shape[0] // par.expert_ranks
                value = value[rank * size:(rank + 1) * size].clone()
            local[key] = value
        out["state"][name] = local
    return out
