"""The job's numeric precision, resolved once per worker from the spec and the device.

`bf16-mixed` (what `auto` means on CUDA) is the policy long pre-training runs use (Megatron-LM,
torchtitan): matmuls and activations in bf16, the weights the optimizer updates (master weights),
their gradients and AdamW's moments in fp32, gradients reduced across ranks in fp32.

- one worker (any strategy): forward and backward run on a bf16 working copy of the model
  (`WorkingCopy`), exactly as a pure-bf16 model runs; then one pass per parameter (compiled on
  CUDA) clips the bf16 gradient by the global norm, steps AdamW on the fp32 master weight and its
  fp32 moments (the optimizer's own state, so checkpoints hold the fp32 model as before) and
  writes the updated weight into the copy. Measured on one H200 (bench/gpu_job_path.py,
  2026-12-03): autocast over fp32 weights ran at 0.93x (dense_124m) and 0.86x (moe_8x) of the
  pure-bf16 step, because every forward re-casts every weight and every backward casts every
  weight gradient.
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
import functools
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
        self._lrs: dict[int, torch.Tensor] = {}

    @torch.no_grad()
    def step(self, optimizer: torch.optim.Optimizer, max_norm: float) -> torch.Tensor:
        """After backward: clip the copy's gradients by their global norm, step AdamW on the
        master weights from them and write the updated weights into the copy, in one pass over
        each parameter (compiled on CUDA: read the bf16 gradient, the fp32 weight and moments,
        write them and the bf16 weight) instead of a gradient cast, a clipping pass, AdamW and a
        copy-back. The optimizer's own state (`step`, `exp_avg`, `exp_avg_sq`) is what is updated,
        so checkpoints and `optimizer.step()` elsewhere see torch's AdamW exactly. Returns the norm."""
        pairs = [(m, c) for m, c in zip(self._masters, self._copies) if c.grad is not None]
        grads = [c.grad for _, c in pairs]
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, dtype=torch.float32)))
        coef = (max_norm / (norm + 1e-6)).clamp(max=1.0) if max_norm > 0 else torch.ones_like(norm)
        by_master = {id(m): c for m, c in pairs}
        members, groups = [], []
        for group in optimizer.param_groups:
            for param in group["params"]:
                if id(param) in by_master:
                    members.append(param)
                    groups.append(group)
        if members:  # one call for every group: one compiled graph
            states = [self._state(optimizer, p) for p in members]
            self._update(members, [by_master[id(p)].grad for p in members],
                         [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                         [by_master[id(p)] for p in members], [s["step"] for s in states],
                         [self._lr(g, norm.device) for g in groups], coef,
                         [(g["betas"][0], g["betas"][1], g["eps"], g["weight_decay"]) for g in groups])
        for _, working in pairs:
            working.grad = None
        # what `optimizer.step()` would run after stepping (e.g. the checkpoint writer preparing
        # its host copy once the moments exist: sharded_state.StagingWriter.preparing)
        for hook in list(optimizer._optimizer_step_post_hooks.values()):
            hook(optimizer, (), {})
        return norm

    @staticmethod
    def _state(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> dict[str, torch.Tensor]:
        """The parameter's AdamW state, created as torch's fused AdamW creates it on first use."""
        state = optimizer.state[param]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=param.device)
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        elif state["step"].device != param.device:  # loaded from a CPU-side checkpoint
            state["step"] = state["step"].to(param.device, torch.float32)
        return state

    def _lr(self, group: dict[str, Any], device: torch.device) -> torch.Tensor:
        """The group's learning rate as a device tensor, refilled each step (a kernel, no host
        sync): a new value as a Python float would recompile the update."""
        held = self._lrs.get(id(group))
        if held is None:
            held = self._lrs[id(group)] = torch.zeros((), dtype=torch.float32, device=device)
        return held.fill_(group["lr"])

    @functools.cached_property
    def _update(self) -> Any:
        if self._masters and self._masters[0].is_cuda:
            return torch.compile(_adamw_into_copy, fullgraph=True, dynamic=False)
        return _adamw_into_copy

    @torch.no_grad()
    def weights_from_master(self) -> None:
        """After the optimizer step, or loading a checkpoint: the master weights into the copy."""
        torch._foreach_copy_(self._copies, [m.detach() for m in self._masters])


def _adamw_into_copy(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
                     exp_avg_sqs: list[torch.Tensor], copies: list[torch.Tensor], steps: list[torch.Tensor],
                     lrs: list[torch.Tensor], coef: torch.Tensor,
                     hyper: list[tuple[float, float, float, float]]) -> None:
    """torch's AdamW (decoupled weight decay, bias-corrected moments) on fp32 `params` from the
    low-precision `grads` scaled by `coef`; the updated weights are written into `copies` too.
    Per parameter: its group's learning rate and (beta1, beta2, eps, weight_decay)."""
    for param, grad, exp_avg, exp_avg_sq, working, step, lr, (beta1, beta2, eps, weight_decay) in zip(
            params, grads, exp_avgs, exp_avg_sqs, copies, steps, lrs, hyper):
        step.add_(1)
        g = grad.float() * coef
        param.mul_(1 - lr * weight_decay)
        exp_avg.lerp_(g, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        bias1 = 1 - beta1 ** step
        bias2 = 1 - beta2 ** step
        denom = (exp_avg_sq.sqrt() / bias2.sqrt()).add_(eps)
        param.sub_(exp_avg / denom * (lr / bias1))
        working.copy_(param)


def working_copy(precision: Precision, model: nn.Module, world: int) -> WorkingCopy | None:
    """The bf16 working copy where the policy uses one: bf16-mixed on one worker."""
    if precision.name != "bf16-mixed" or world != 1:
        return None
    return WorkingCopy(model, precision.compute_dtype)
