"""Expert parallelism: each rank of a process group keeps E / W experts.

The model never sets up torch.distributed; the caller passes an initialised group.
``apply_expert_parallel(model, group)`` keeps on rank r the contiguous experts
[r * E/W, (r+1) * E/W) of every MoE layer. In the forward pass each rank routes its own
tokens, sends every assignment to the rank that owns its expert with
``all_to_all_single`` (split sizes are exchanged first, as every rank must know what
it receives), runs its local experts as one grouped GEMM and sends the results back
(GShard, Lepikhin et al. 2020). Both all-to-alls are differentiable.

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

from .moe import GroupedExperts, moe_layers, stack_w1_w3

_EXPERT_WEIGHTS = ("w13", "w2")


class _AllToAll(torch.autograd.Function):
    """all_to_all_single whose backward is the reverse all_to_all of the gradient."""

    @staticmethod
    def forward(ctx, x: Tensor, out_splits: list[int], in_splits: list[int], group: dist.ProcessGroup) -> Tensor:  # type: ignore[override]
        ctx.splits, ctx.group = (out_splits, in_splits), group
        out = x.new_empty((sum(out_splits), *x.shape[1:]))
        dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:  # type: ignore[override]
        out_splits, in_splits = ctx.splits
        grad_in = grad.new_empty((sum(in_splits), *grad.shape[1:]))
        dist.all_to_all_single(grad_in, grad.contiguous(), in_splits, out_splits, group=ctx.group)
        return grad_in, None, None, None


class ExpertParallel:
    """Dispatcher installed on each MoE layer by ``apply_expert_parallel``."""

    def __init__(self, group: dist.ProcessGroup, n_experts: int) -> None:
        self.group = group
        self.world, self.rank = dist.get_world_size(group), dist.get_rank(group)
        self.local = n_experts // self.world

    def global_counts(self, counts: Tensor) -> Tensor:
        """Routed-token counts per expert summed over the group (balance statistics)."""
        total = counts.clone()
        dist.all_reduce(total, group=self.group)
        return total

    def run(self, experts: GroupedExperts, xs: Tensor, counts: Tensor) -> Tensor:
        """Expert outputs for the expert-sorted rows ``xs`` with ``counts`` (E,) per expert."""
        w, el = self.world, self.local
        # recv[r * el + j] = rows that rank r sends to my local expert j.
        recv = torch.empty_like(counts)
        dist.all_to_all_single(recv, counts.contiguous(), group=self.group)
        send_splits = counts.view(w, el).sum(1).tolist()  # host sync: split sizes are
        recv_splits = recv.view(w, el).sum(1).tolist()  # arguments of the collective
        n_sent = sum(send_splits)
        received = _AllToAll.apply(xs[:n_sent], recv_splits, send_splits, self.group)
        # Received rows are ordered (source rank, local expert); group them by expert.
        expert_of_row = torch.arange(el, device=xs.device).repeat(w).repeat_interleave(recv)
        perm = expert_of_row.argsort(stable=True)
        out = experts(received[perm], recv.view(w, el).sum(0))
        back = torch.empty_like(out).index_copy_(0, perm, out)
        ys = _AllToAll.apply(back, send_splits, recv_splits, self.group)
        return torch.cat((ys, ys.new_zeros(xs.shape[0] - n_sent, ys.shape[1])))  # dropped rows


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
        moe.ep = ExpertParallel(group, moe.n_experts)
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
        world = moe.ep.world if isinstance(moe.ep, ExpertParallel) else 1
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
            stack_w1_w3(local, f"{name}.")  # a checkpoint from before w13
            for w in _EXPERT_WEIGHTS:
                key = f"{name}.{w}"
                n = getattr(mod, w).shape[0]
                local[key] = local[key][mod.first:mod.first + n]
    model.load_state_dict(local, strict=strict)


def gather_full_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The unsharded state dict, assembled on every rank of each EP group (collective)."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for name, moe in model.named_modules():
        if not isinstance(getattr(moe, "ep", None), ExpertParallel):
            continue
        ep = moe.ep
        for w in _EXPERT_WEIGHTS:
            shard = getattr(moe.experts, w).detach().contiguous()
            parts = [torch.empty_like(shard) for _ in range(ep.world)]
            dist.all_gather(parts, shard, group=ep.group)
            state[f"{name}.experts.{w}"] = torch.cat(parts)
    return state
