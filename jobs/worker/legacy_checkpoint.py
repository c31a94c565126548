"""Loading checkpoints of the unsharded layout rayfleet wrote before sharded checkpoints:
`model.pt`, `optim.pt` and `rng.pt` in the step folder, the full state keyed by parameter name,
written by rank 0. A job checkpointed before an upgrade resumes after it, on any strategy and
world size; nothing writes this layout any more."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

from rayfleet.jobs.worker.parallelize import Parallel
from rayfleet.model import expert_parameter_names, load_full_state_dict
from rayfleet.model.moe import stack_w1_w3

MODEL = "model.pt"


def is_legacy(path: Path) -> bool:
    return (path / MODEL).exists()


def load_legacy(path: Path, par: Parallel, optimizer: torch.optim.Optimizer, world: int | None) -> None:
    """Load a legacy checkpoint into a model placed for any strategy; `world`: the world size
    that wrote it (its RNG states are restored only on the same one)."""
    # weights_only everywhere: loading never unpickles an arbitrary object, so whoever can write the
    # storage cannot run code on the ranks (the optimizer state and the RNG states are tensors,
    # numbers and containers, which it allows; checkpoints of 0.1.0 load the same way)
    model_state = torch.load(path / MODEL, map_location="cpu", weights_only=True)
    optim_state = torch.load(path / "optim.pt", map_location="cpu", weights_only=True)
    _stack_separate_expert_weights(model_state, optim_state)
    if par.strategy == "moe" and par.world > 1:
        load_full_state_dict(par.model, model_state)
        set_optimizer_state_dict(par.model, optimizer, _local_expert_optim(par, optim_state))
    else:
        options = StateDictOptions(full_state_dict=True) if par.strategy == "fsdp" else StateDictOptions()
        set_model_state_dict(par.model, model_state, options=options)
        set_optimizer_state_dict(par.model, optimizer, optim_state, options=options)
    rng = torch.load(path / "rng.pt", weights_only=True)
    if world == par.world:
        torch.set_rng_state(rng[par.rank])


def _stack_separate_expert_weights(model_state: dict[str, Any], optim_state: dict[str, Any]) -> None:
    """A checkpoint written while the experts kept w1 and w3 apart, in the layout of today's
    stacked w13 (model/moe.py): the weights and their Adam moments concatenated along the hidden
    dimension, the optimizer's parameter list naming w13 where it named w1 and w3."""
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


def _local_expert_optim(par: Parallel, state: dict[str, Any]) -> dict[str, Any]:
    """This rank's slice of each expert moment, along the expert dimension like its weights."""
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
