"""The job's numeric precision, resolved once per worker from the spec and the device.

`bf16-mixed` (what `auto` means on CUDA) is the policy long pre-training runs use (Megatron-LM,
torchtitan): matmuls and activations in bf16, the weights the optimizer updates (master weights),
their gradients and AdamW's moments in fp32, gradients reduced across ranks in fp32.

- one worker (any strategy): forward and backward run on a bf16 working copy of the model
  (`WorkingCopy`), exactly as a pure-bf16 model runs; after backward its gradients are copied
  into the fp32 model's `.grad`, which is clipped, stepped by AdamW and checkpointed as before,
  and the updated fp32 weights are copied back into the bf16 copy. Measured on one H200
  (bench/gpu_job_path.py, 2026-12-03): autocast over fp32 weights ran at 0.93x (dense_124m) and
  0.86x (moe_8x) of the pure-bf16 step, because every forward re-casts every weight and every
  backward casts every weight gradient; the copy costs two element-wise passes over the weights
  per step instead.
- ddp and moe (expert parallel) on several workers: the parameters stay fp32 and the forward runs
  under bf16 autocast. The fp32 parameters are the master weights, so the optimizer, gradient
  clipping, the expert-gradient reduction and checkpoints need nothing extra; DDP reduces the
  fp32 gradients. (A working copy there would need its own DDP wrapper reducing in fp32 and an
  expert-sharded copy: not built yet.)
- fsdp: FSDP2's `MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`: the sharded fp32
  parameters are the master weights; each block all-gathers them as bf16 (half the traffic) and
  reduce-scatters the gradients in fp32. Autocast stays on so that the ops autocast keeps in fp32
  (softmax, norms' reductions) do so under every strategy.

Gradients are reduced in fp32 rather than bf16: a sum over many ranks in bf16 (8 bits of
mantissa) rounds away the small gradients that fp32 master weights exist to keep, and on one
node the reduction is a small share of the step.

`bf16` stores the weights, gradients and optimizer state in bf16, with no master copy: the
fastest, but an update smaller than a weight's bf16 spacing (1/256 of its value) is lost, which
stalls long runs at small learning rates. `fp32` computes in fp32 (what `auto` means on CPU).
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

POLICIES = ("fp32", "bf16-mixed", "bf16")


@dataclass(frozen=True)
class Precision:
    """A resolved policy: the dtype parameters are stored in, the dtype matmuls run in, and the
    dtype gradients are reduced in across ranks."""

    name: str
    param_dtype: torch.dtype
    compute_dtype: torch.dtype
    reduce_dtype: torch.dtype

    @property
    def autocast(self) -> bool:
        return self.param_dtype != self.compute_dtype

    def context(self, device: torch.device) -> contextlib.AbstractContextManager[Any]:
        """Where the forward pass runs."""
        if self.autocast:
            return torch.autocast(device_type=device.type, dtype=self.compute_dtype)
        return contextlib.nullcontext()

    def fsdp_policy(self) -> Any:
        """FSDP2's mixed-precision policy for `fully_shard` (None: keep the parameters' dtype)."""
        if not self.autocast:
            return None
        from torch.distributed.fsdp import MixedPrecisionPolicy

        return MixedPrecisionPolicy(param_dtype=self.compute_dtype, reduce_dtype=self.reduce_dtype)


def resolve(policy: str, device: torch.device) -> Precision:
    """The spec's `precision` on `device`; `auto` is bf16-mixed on CUDA and fp32 elsewhere."""
    if policy == "auto":
        policy = "bf16-mixed" if device.type == "cuda" else "fp32"
    if policy == "fp32":
        return Precision(policy, torch.float32, torch.float32, torch.float32)
    if policy == "bf16-mixed":
        return Precision(policy, torch.float32, torch.bfloat16, torch.float32)
    if policy == "bf16":
        return Precision(policy, torch.bfloat16, torch.bfloat16, torch.bfloat16)
    raise ValueError(f"unknown precision {policy!r}; accepted: auto, {', '.join(POLICIES)}")


class WorkingCopy:
    """A bf16 copy of a one-worker fp32 model that forward and backward run on; the fp32 model
    stays the master that the optimizer updates and checkpoints hold (module docstring)."""

    def __init__(self, master: nn.Module, dtype: torch.dtype) -> None:
        self.module = copy.deepcopy(master).to(dtype)
        self._masters = [p for p in master.parameters() if p.requires_grad]
        self._copies = [p for p in self.module.parameters() if p.requires_grad]

    @torch.no_grad()
    def gradients_to_master(self) -> None:
        """After backward: the copy's gradients, in fp32, as the master's `.grad` (reusing the
        master's gradient tensors from step to step); the copy's are dropped."""
        masters, grads = [], []
        for master, working in zip(self._masters, self._copies):
            if working.grad is None:
                master.grad = None
                continue
            if master.grad is None:
                master.grad = torch.empty_like(master)
            masters.append(master.grad)
            grads.append(working.grad)
            working.grad = None
        if masters:
            torch._foreach_copy_(masters, grads)

    @torch.no_grad()
    def weights_from_master(self) -> None:
        """After the optimizer step, or loading a checkpoint: the master weights into the copy."""
        torch._foreach_copy_(self._copies, [m.detach() for m in self._masters])


def working_copy(precision: Precision, model: nn.Module, world: int) -> WorkingCopy | None:
    """The bf16 working copy where the policy uses one: bf16-mixed on one worker."""
    if precision.name != "bf16-mixed" or world != 1:
        return None
    return WorkingCopy(model, precision.compute_dtype)
