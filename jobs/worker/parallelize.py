"""Wrapping the plain model for a strategy, from outside the model (torchtitan's parallelize.py).

- ddp: DistributedDataParallel; gradients averaged over all ranks during backward.
- fsdp: FSDP2 `fully_shard` on every block, then on the root; parameters, gradients and optimizer
  state sharded over all ranks; with a mixed-precision policy (jobs/worker/precision.py) the
  blocks gather their parameters in bf16 and reduce-scatter gradients in fp32.
- moe: experts sharded over expert-parallel groups of `expert_parallel` consecutive ranks
  (`model.apply_expert_parallel`); every other parameter replicated and averaged by DDP, which
  is told to leave the expert parameters alone; expert gradients are then reduced by the rule
  derived in `model/parallelize.py` (divide by the EP size, average over replicas).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from rayfleet.model import apply_expert_parallel, expert_parameter_names, expert_parameters, reduce_expert_gradients


@dataclass
class Parallel:
    """A model placed for one strategy. `module` runs forward; `model` is the plain model."""

    strategy: str
    model: nn.Module
    module: nn.Module
    rank: int
    world: int
    ep_group: dist.ProcessGroup | None = None
    replica_group: dist.ProcessGroup | None = None
    expert_ranks: int = 1
    # moe on several ranks: the (replica, expert) mesh whose expert dim is each EP group, for
    # describing the expert shards to torch.distributed.checkpoint (jobs/worker/sharded_state.py)
    expert_mesh: Any = None

    def after_backward(self) -> None:
        """Finish gradient reduction that the wrapper does not do during backward."""
        if self.strategy == "moe" and self.world > 1:
            reduce_expert_gradients(self.model, self.replica_group)

    def clip_grad_norm(self, max_norm: float) -> torch.Tensor:
        """Clip by the global gradient norm across all ranks; returns that norm as a tensor on the
        device (no host sync: reading it is the caller's choice, e.g. at logged steps)."""
        if self.strategy == "fsdp":
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm if max_norm > 0 else float("inf"))
            return norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        if self.strategy == "moe" and self.world > 1:
            return self._clip_expert_parallel(max_norm)
        return torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm if max_norm > 0 else float("inf"))

    def _clip_expert_parallel(self, max_norm: float) -> torch.Tensor:
        # Replicated grads are equal everywhere: count once. Expert shards differ across the EP group.
        # On the device with one all-reduce and one host sync (a float() per parameter stalled
        # every step on a GPU, hundreds of times).
        expert_ids = {id(p) for p in expert_parameters(self.model)}
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if not grads:
            return torch.zeros(())

        def square_sum(tensors: list[torch.Tensor]) -> torch.Tensor:
            zero = torch.zeros((), dtype=torch.float64, device=grads[0].device)
            norms = (torch.linalg.vector_norm(g.detach(), dtype=torch.float32).double() for g in tensors)
            return sum((n * n for n in norms), zero)

        shared = square_sum([p.grad for p in self.model.parameters() if p.grad is not None and id(p) not in expert_ids])
        experts = square_sum([p.grad for p in expert_parameters(self.model) if p.grad is not None])
        dist.all_reduce(experts, group=self.ep_group)
        norm = (shared + experts).sqrt()
        if max_norm > 0:
            scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)
            torch._foreach_mul_(grads, scale.to(grads[0].dtype))
        return norm


def parallelize(model: nn.Module, strategy: str, expert_parallel: int, device: torch.device,
                fsdp_policy: Any = None) -> Parallel:
    """Place `model` (built identically on every rank) for `strategy` on the default group;
    `fsdp_policy`: FSDP2's MixedPrecisionPolicy for fsdp (None: the parameters' own dtype)."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    model.to(device)
    if world == 1:
        return Parallel(strategy, model, model, rank, world)
    ids = [device.index] if device.type == "cuda" else None
    if strategy == "ddp":
        return Parallel(strategy, model, DistributedDataParallel(model, device_ids=ids), rank, world)
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        options = {"mp_policy": fsdp_policy} if fsdp_policy is not None else {}
        for block in _blocks(model):
            fully_shard(block, **options)
        fully_shard(model, **options)
        return Parallel(strategy, model, model, rank, world)
    if strategy == "moe":
        ep_group, replica_group = expert_parallel_groups(world, rank, expert_parallel)
        apply_expert_parallel(model, ep_group)
        model.to(device)
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, expert_parameter_names(model))
        module = DistributedDataParallel(model, device_ids=ids)
        from torch.distributed.device_mesh import init_device_mesh

        # rank = replica * expert_parallel + expert: the EP groups of expert_parallel_groups
        mesh = init_device_mesh(device.type, (world // expert_parallel, expert_parallel),
                                mesh_dim_names=("replica", "expert"))
        return Parallel(strategy, model, module, rank, world, ep_group, replica_group, expert_parallel, mesh)
    raise ValueError(f"unknown strategy {strategy!r}")


def expert_parallel_groups(world: int, rank: int, size: int
                           ) -> tuple[dist.ProcessGroup, dist.ProcessGroup | None]:
    """EP groups of `size` consecutive ranks; replica groups of the ranks holding the same shard.

    Every rank must create every group, in the same order (torch.distributed's rule).
    """
    if world % size:
        raise ValueError(f"expert_parallel {size} does not divide the world size {world}")
    mine: dist.ProcessGroup | None = None
    for start in range(0, world, size):
        group = dist.new_group(list(range(start, start + size)))
        if start <= rank < start + size:
            mine = group
    replica: dist.ProcessGroup | None = None
    if world > size:
        for index in range(size):
            group = dist.new_group(list(range(index, world, size)))
            if rank % size == index:
                replica = group
    assert mine is not None
    return mine, replica


def _blocks(model: nn.Module) -> list[nn.Module]:
    layers = getattr(model, "layers", None)
    if layers is None:
        raise ValueError("fsdp needs a model with a `layers` ModuleList of blocks")
    return list(layers)
