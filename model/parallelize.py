"""Expert parallelism applied to a built model from outside its math (torchtitan's
parallelize.py): shard every MoE layer's experts over a process group, split the parameters
for the trainer, reduce the expert gradients, and convert state dicts between the sharded
and the full layout.

``apply_expert_parallel(model, group)`` keeps on rank r of W the contiguous experts
[r * E/W, (r+1) * E/W) of every MoE layer and installs the all-to-all dispatch of moe.py
(``AllToAllDispatch``) that sends each token to its experts' rank. The caller creates the
group; nothing here sets up torch.distributed.

Gradient reduction (why expert grads must not be averaged like DDP grads)
----------------------------------------------------------------------------
Let D data-parallel ranks each compute ``loss_r`` = mean over their own tokens, so the
global objective is L = (1/D) * sum_r loss_r, and let the EP group have W ranks (D = W*R
with R replicas of each expert shard). Then
* non-expert parameters are replicated: average their grads over all D ranks (DDP);
* an expert shard's grad, after ``backward``, already holds the sum over the W ranks
  of its EP group of d loss_r / dw, delivered by the all-to-all backward. The right
  grad is that sum, summed over the R replica groups, divided by D. So: divide by W
  and average over the replica group (ranks holding the same shard). Averaging over
  the EP group instead would mix different experts; skipping the division by W would
  scale the expert learning rate by W.
``reduce_expert_gradients`` does exactly the expert part; ``expert_parameters`` /
``non_expert_parameters`` split the parameters for the trainer. When wrapping in
DistributedDataParallel, keep DDP off the expert shards (it would average different
experts): ``DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model,
expert_parameter_names(model))``.

The load-balancing loss uses expert counts summed over the EP group, so with equal
token counts per rank the mean of the per-rank aux losses equals the single-process
aux loss on the concatenated batch, and so do its (DDP-averaged) gradients. With data
parallelism beyond the EP group the statistic is pooled per EP group.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import Tensor, nn

from rayfleet.model.moe import AllToAllDispatch, GroupedExperts, moe_layers, stack_w1_w3

_EXPERT_WEIGHTS = ("w13", "w2")


def apply_expert_parallel(model: nn.Module, group: dist.ProcessGroup) -> nn.Module:
    """Shard every MoE layer of ``model`` over ``group`` in place and return the model.

    Call it after building (and seeding) the full model identically on every rank and
    before creating the optimiser (the expert weights become new, smaller Parameters);
    the rank keeps its contiguous slice of each expert stack.
    """
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    for moe in moe_layers(model):
        if moe.n_experts % world:
            raise ValueError(f"n_experts={moe.n_experts} is not divisible by the group size {world}")
        ex = moe.experts
        if ex.n_total != ex.w2.shape[0]:
            raise ValueError("model is already expert-parallel")
        local = moe.n_experts // world
        ex.first = rank * local
        for name in _EXPERT_WEIGHTS:
            full = getattr(ex, name)
            setattr(ex, name, nn.Parameter(full.detach()[ex.first:ex.first + local].clone()))
        moe.ep = AllToAllDispatch(group, moe.n_experts)
    return model


def _expert_param_ids(model: nn.Module) -> set[int]:
    return {id(p) for m in model.modules() if isinstance(m, GroupedExperts) for p in m.parameters()}


def expert_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """Parameters of the experts (sharded under expert parallelism)."""
    ids = _expert_param_ids(model)
    return (p for p in model.parameters() if id(p) in ids)


def expert_parameter_names(model: nn.Module) -> list[str]:
    """Qualified names of the expert parameters (e.g. for DDP's ignore list)."""
    ids = _expert_param_ids(model)
    return [name for name, p in model.named_parameters() if id(p) in ids]


def non_expert_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """All other parameters (replicated on every rank: reduce them like DDP)."""
    ids = _expert_param_ids(model)
    return (p for p in model.parameters() if id(p) not in ids)


@torch.no_grad()
def reduce_expert_gradients(model: nn.Module, replica_group: dist.ProcessGroup | None = None) -> None:
    """Turn the expert grads of one backward into grads of the global mean loss.

    Divides each expert grad by the EP group size W and, if ``replica_group`` (the ranks
    holding the same expert shard in other EP groups) is given, averages over it.
    See the module docstring for the derivation. Without expert parallelism W = 1.
    """
    for moe in moe_layers(model):
        world = 1 if moe.ep is None else moe.ep.world
        for p in moe.experts.parameters():
            if p.grad is None:
                continue
            p.grad.div_(world)
            if replica_group is not None:  # SUM then divide: gloo has no ReduceOp.AVG
                dist.all_reduce(p.grad, group=replica_group)
                p.grad.div_(dist.get_world_size(replica_group))


def load_full_state_dict(model: nn.Module, state: dict[str, Tensor], strict: bool = True) -> None:
    """Load an unsharded state dict into a (possibly) expert-parallel model."""
    local = dict(state)
    for name, mod in model.named_modules():
        if isinstance(mod, GroupedExperts):
            stack_w1_w3(local, f"{name}.")  # checkpoints with w1 and w3 as separate keys
            for w in _EXPERT_WEIGHTS:
                key = f"{name}.{w}"
                n = getattr(mod, w).shape[0]
                local[key] = local[key][mod.first:mod.first + n]
    model.load_state_dict(local, strict=strict)


def gather_full_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The unsharded state dict, assembled on every rank of each EP group (collective)."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for name, moe in model.named_modules():
        ep = getattr(moe, "ep", None)
        if not isinstance(ep, AllToAllDispatch):
            continue
        for w in _EXPERT_WEIGHTS:
            shard = getattr(moe.experts, w).detach().contiguous()
            parts = [torch.empty_like(shard) for _ in range(ep.world)]
            dist.all_gather(parts, shard, group=ep.group)
            state[f"{name}.experts.{w}"] = torch.cat(parts)
    return state
