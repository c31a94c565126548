"""Output head fused with cross-entropy, in chunks of tokens.

For a 50k vocabulary the fp32 logits of a 8k-token micro-batch are 1.6 GB, plus the
same again for their gradient. Here logits exist one chunk at a time: the forward pass
computes, per chunk, the loss and right away the gradients d loss / d h and
d loss / d W (softmax - onehot is all the backward needs), so nothing of size
tokens x vocab is kept for the backward pass. The matmul count equals the unfused head
(logits, grad_h, grad_W), so this costs no extra FLOPs, unlike recomputation
(the approach of Liger-Kernel's fused linear cross-entropy, Hsu et al. 2024).

Per chunk the logits stay in the matmul's dtype (bf16 under autocast or with bf16
weights); the log-sum-exp and the softmax are taken in float32 and the gradient is
written once, in the logits' dtype, which is what the two gradient matmuls read. On CUDA
that elementwise step is one Triton kernel (kernels/cross_entropy.py) that overwrites the
logits with their gradient: one read and one write of the chunk x vocab tensor. Without
Triton it is a compiled (fused) kernel pair, even in an eager model: read the logits twice,
write the gradient once, instead of some ten passes.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
from torch import Tensor

from rayfleet.model.kernels import cross_entropy as ce_kernel

IGNORE_INDEX = -100  # same convention as torch.nn.functional.cross_entropy


def _chunk_grad(logits: Tensor, targets: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
    """Summed loss of one chunk and ``scale`` x d(summed loss) / d logits, in the logits' dtype."""
    x = logits.to(torch.promote_types(logits.dtype, torch.float32))
    lse = x.logsumexp(dim=-1)
    valid = targets != IGNORE_INDEX
    safe = targets.clamp(min=0)
    nll = lse - x.gather(-1, safe[:, None]).squeeze(-1)
    loss = torch.where(valid, nll, 0.0).sum()
    onehot = torch.arange(x.shape[-1], device=x.device) == safe[:, None]
    grad = (torch.exp(x - lse[:, None]) - onehot.to(x.dtype)) * (valid.to(x.dtype) * scale)[:, None]
    return loss, grad.to(logits.dtype)


@functools.lru_cache(maxsize=1)
def _compiled_chunk_grad() -> Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]:
    return torch.compile(_chunk_grad, dynamic=False)


def _chunk_grad_fn(x: Tensor) -> Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]:
    # Compiled on CUDA; traced as it is inside a compiled model (no compile within a compile).
    if x.is_cuda and not torch.compiler.is_compiling():
        return _compiled_chunk_grad()
    return _chunk_grad


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, targets: Tensor, chunk: int) -> Tensor:  # type: ignore[override]
        acc = torch.promote_types(h.dtype, torch.float32)
        scale = 1.0 / (targets != IGNORE_INDEX).sum().clamp(min=1).to(acc)
        chunk_grad = _chunk_grad_fn(h)
        total = torch.zeros((), dtype=acc, device=h.device)
        grad_h = torch.empty_like(h)
        grad_w: Tensor | None = None
        for s in range(0, h.shape[0], chunk):
            hc, tc = h[s:s + chunk], targets[s:s + chunk]
            g = hc @ weight.t()
            if ce_kernel.handles(g):  # one Triton kernel turns the logits into their gradient
                loss = ce_kernel.softmax_grad_(g, tc, scale.float()).sum()
            else:
                loss, g = chunk_grad(g, tc, scale)
            total = total + loss
            grad_h[s:s + chunk] = (g @ weight).to(h.dtype)
            gw = g.t() @ hc
            # One chunk: no accumulation. Several: accumulate in float32.
            grad_w = gw if grad_w is None else grad_w.to(acc) + gw
        assert grad_w is not None
        ctx.save_for_backward(grad_h, grad_w.to(weight.dtype))
        return total * scale

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, Tensor, None, None]:  # type: ignore[override]
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_out.to(grad_h.dtype), grad_w * grad_out.to(grad_w.dtype), None, None


def _chunk_loss(h: Tensor, weight: Tensor, targets: Tensor) -> Tensor:
    """Summed loss of one chunk (no gradient work)."""
    logits = (h @ weight.t()).to(torch.promote_types(h.dtype, torch.float32))
    nll = logits.logsumexp(dim=-1) - logits.gather(-1, targets.clamp(min=0)[:, None]).squeeze(-1)
    return torch.where(targets != IGNORE_INDEX, nll, 0.0).sum()


def linear_cross_entropy(h: Tensor, weight: Tensor, targets: Tensor, chunk: int = 2048) -> Tensor:
    """Mean cross-entropy of ``softmax(h @ weight.T)`` against ``targets``.

    h: (N, D) hidden states, weight: (V, D) output head, targets: (N,) with
    ``IGNORE_INDEX`` for positions that do not count. Mean over counted positions
    (0 if there are none). Equal to ``F.cross_entropy(h @ weight.T, targets)``.
    With grad enabled the gradient work happens here, in the forward pass: evaluate
    under ``torch.no_grad()`` to skip it.
    """
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(h, weight, targets, chunk)
    acc = torch.promote_types(h.dtype, torch.float32)
    total = torch.zeros((), dtype=acc, device=h.device)
    for s in range(0, h.shape[0], chunk):
        total = total + _chunk_loss(h[s:s + chunk], weight, targets[s:s + chunk])
    return total / (targets != IGNORE_INDEX).sum().clamp(min=1).to(acc)
