"""Checkpoints: model, optimizer, data position (the step) and RNG state, in one layout for every
strategy, committed atomically.

A job's folder (`<storage>/jobs/<name>`) holds one Ray Train run folder per submission
(`runs/<submission id>`); checkpoints are written into the current one.
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
import re
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

from rayfleet.jobs.worker.parallelize import Parallel
from rayfleet.model import expert_parameter_names, gather_full_state_dict, load_full_state_dict
from rayfleet.model.moe import stack_w1_w3

PREFIX = "rayfleet-step-"  # not Ray Train's "checkpoint_*", which shares the run folder
RUNS = "runs"
MARKER = "COMMITTED"
_NAME = re.compile(rf"^{PREFIX}(\d+)$")
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


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
    return json.loads((path / "meta.json").read_text())


def save_checkpoint(folder: Path, step: int, par: Parallel, optimizer: torch.optim.Optimizer,
                    meta: dict[str, Any]) -> Path:
    """Collective: every rank calls it; rank 0 writes. Returns the committed folder."""
    model_state, optim_state = _full_state(par, optimizer)
    rng = [None] * par.world
    if par.world > 1:
        dist.all_gather_object(rng, torch.get_rng_state())
    else:
        rng = [torch.get_rng_state()]
    path = folder / f"{PREFIX}{step:08d}"
    if par.rank == 0:
        tmp = folder / f".tmp-{PREFIX}{step:08d}-{os.getpid()}"
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
    # weights_only everywhere: loading never unpickles an arbitrary object, so whoever can write the
    # storage cannot run code on the ranks (the optimizer state and the RNG states are tensors,
    # numbers and containers, which it allows; checkpoints of 0.1.0 load the same way)
    model_state = torch.load(path / "model.pt", map_location="cpu", weights_only=True)
    optim_state = torch.load(path / "optim.pt", map_location="cpu", weights_only=True)
    _stack_separate_expert_weights(model_state, optim_state)
    if par.strategy == "moe" and par.world > 1:
        load_full_state_dict(par.model, model_state)
        set_optimizer_state_dict(par.model, optimizer, _local_expert_optim(par, optim_state))
    else:
        options = StateDictOptions(full_state_dict=True) if par.strategy == "fsdp" else StateDictOptions()
        set_model_state_dict(par.model, model_state, options=options)
        set_optimizer_state_dict(par.model, optimizer, optim_state, options=options)
    meta = read_meta(path)
    rng = torch.load(path / "rng.pt", weights_only=True)
    if meta.get("world") == par.world:
        torch.set_rng_state(rng[par.rank])
    return meta


def _stack_separate_expert_weights(model_state: dict[str, Any], optim_state: dict[str, Any]) -> None:
    """A checkpoint written while the experts kept w1 and w3 apart, in the layout of today's
    stacked w13 (model/moe.py): the weights and their Adam moments concatenated along the hidden
    dimension, the optimizer's parameter list naming w13 where it named w1 and w3. A job that
    was checkpointed before an upgrade resumes after it."""
    for prefix in [key[:-2] for key in model_state if key.endswith(".experts.w1")]:
        stack_w1_w3(model_state, prefix)
        moments = optim_state["state"]
        if prefix + "w1" in moments and prefix + "w3" in moments:
            w1, w3 = moments.pop(prefix + "w1"), moments.pop(prefix + "w3")
            moments[prefix + "w13"] = {key: torch.cat((value, w3[key]), dim=1)
                                       if torch.is_tensor(value) and value.dim() > 1 else value
                                       for key, value in w1.items()}
        for group in optim_state["param_groups"]:
            group["params"] = [prefix + "w13" if name == prefix + "w1" else name
                               for name in group["params"] if name != prefix + "w3"]


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
    # Only rank 0 writes, and it prunes right after its own commit: anything uncommitted now was
    # left by a crash between the rename and the marker, and can never be resumed from.
    for stale in job_dir.glob(f"{RUNS}/*/.tmp-{PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    for folder in checkpoint_dirs(job_dir, committed=False):
        if not (folder / MARKER).exists():
            shutil.rmtree(folder, ignore_errors=True)


def _full_state(par: Parallel, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    """Unsharded model and optimizer state keyed by parameter name (collective)."""
    if par.strategy == "moe" and par.world > 1:
        model_state = {k: v.cpu() for k, v in gather_full_state_dict(par.model).items()}
        optim_state = get_optimizer_state_dict(par.model, optimizer)
        return model_state, _gather_expert_optim(par, optim_state)
    options = FULL if par.strategy == "fsdp" else StateDictOptions(cpu_offload=True)
    return (get_model_state_dict(par.model, options=options),
            get_optimizer_state_dict(par.model, optimizer, options=options))


def _gather_expert_optim(par: Parallel, state: dict[str, Any]) -> dict[str, Any]:
    """Expert shards' Adam moments gathered along the expert dimension, like their weights."""
    experts = set(expert_parameter_names(par.model))
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
    experts = set(expert_parameter_names(par.model))
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
