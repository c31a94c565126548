"""The job's numeric precision, resolved once per worker from the spec and the device.

`bf16-mixed` (what `auto` means on CUDA) is the policy long pre-training runs use (Megatron-LM,
torchtitan): matmuls and activations in bf16, the weights the optimizer updates (master weights),
their gradients and AdamW's moments in fp32, gradients reduced across ranks in fp32.

- ddp and moe (expert parallel): the parameters stay fp32 and the forward runs under bf16
  autocast. The fp32 parameters are the master weights, so the optimizer, gradient clipping, the
  expert-gradient reduction and checkpoints need nothing extra; DDP reduces the fp32 gradients.
  Under torch.compile (the default on CUDA) the weight casts are fused into the graph: what is
  left is one read of the fp32 weights per step, against the bookkeeping of a separate bf16
  working copy (a second weight set, a grad copy and a copy-back per step) that would save it.
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
from dataclasses import dataclass
from typing import Any

import torch

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
