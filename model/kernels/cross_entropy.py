"""Cross-entropy's softmax gradient in place, as one Triton kernel (CUDA only).

For each row of logits x (N, V) and its target t, ``softmax_grad_`` computes in one launch
    loss[row] = logsumexp(x) - x[t]                        (0 where t == IGNORE_INDEX)
    x[:]      = (softmax(x) - onehot(t)) * scale            (0 where t == IGNORE_INDEX)
overwriting the logits with d(scale * summed loss) / d logits. Each program takes one row:
a first pass reads it once for the running max and sum of exponentials (online softmax,
Milakov & Gimelshein 2018), a second pass reads it again (in part from L2: the row is 100 KB
for a 50k vocabulary) and writes the gradient over it. That is one write and little more than
one read of the N x V tensor from device memory (2.1 TB/s counted so, against 3.0 TB/s for a
plain copy, on an H100), where the compiled elementwise version reads it twice and
writes a second N x V tensor (and holds it: 1.6 GB more at 16k tokens x 50k in bf16). The
in-place write is Liger-Kernel's idea (Hsu et al. 2024); the code is this project's.

``AVAILABLE`` is False where Triton or CUDA is missing (or RAYFLEET_CE_KERNEL=0), and
``handles(logits)`` False for logits it would compute less exactly (float64): callers then keep
the PyTorch path of loss.py.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

from rayfleet.model.kernels.enabled import triton_enabled

IGNORE_INDEX = -100
# One row of 50304 in 8192-wide blocks, 7 iterations per pass: the fastest of 12 launch shapes
# on an H100 (bench/ce_kernel.py: 1.59 ms for 16384 x 50304 bf16, 2.21 ms compiled PyTorch).
BLOCK = 8192
NUM_WARPS = 16

# Decided once at import (a plain flag: torch.compile reads it without tracing a cache).
AVAILABLE = triton_enabled("RAYFLEET_CE_KERNEL")

if AVAILABLE:
    import triton
    import triton.language as tl

    @triton.jit
    def _softmax_grad_kernel(x_ptr, row_stride, targets_ptr, loss_ptr, scale_ptr, V,
                             IGNORE: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        base = x_ptr + row * row_stride
        target = tl.load(targets_ptr + row)
        cols0 = tl.arange(0, BLOCK)
        m = tl.full((), float("-inf"), tl.float32)
        s = tl.full((), 0.0, tl.float32)
        for start in range(0, V, BLOCK):
            cols = start + cols0
            x = tl.load(base + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
            m_new = tl.maximum(m, tl.max(x, axis=0))
            s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
            m = m_new
        lse = m + tl.log(s)
        valid = target != IGNORE
        safe = tl.where(valid, target, 0)
        x_t = tl.load(base + safe).to(tl.float32)
        tl.store(loss_ptr + row, tl.where(valid, lse - x_t, 0.0))
        coef = tl.where(valid, tl.load(scale_ptr).to(tl.float32), 0.0)
        for start in range(0, V, BLOCK):
            cols = start + cols0
            inside = cols < V
            x = tl.load(base + cols, mask=inside, other=0.0).to(tl.float32)
            g = tl.exp(x - lse) - tl.where(cols == safe, 1.0, 0.0)
            tl.store(base + cols, (g * coef).to(x_ptr.dtype.element_ty), mask=inside)


@functools.lru_cache(maxsize=1)
def _register() -> Any:
    """Register the op once (where ``AVAILABLE``); returns the raw @triton.jit kernel."""
    from torch.library import triton_op, wrap_triton

    @triton_op("rayfleet::softmax_grad_", mutates_args={"logits"})
    def softmax_grad_op(logits: Tensor, targets: Tensor, scale: Tensor) -> Tensor:
        n, v = logits.shape
        loss = torch.empty(n, dtype=torch.float32, device=logits.device)
        wrap_triton(_softmax_grad_kernel)[(n,)](
            logits, logits.stride(0), targets, loss, scale, v, IGNORE=IGNORE_INDEX, BLOCK=BLOCK,
            num_warps=NUM_WARPS)
        return loss

    return _softmax_grad_kernel


if AVAILABLE:
    _register()


def handles(logits: Tensor) -> bool:
    """Whether the kernel computes this chunk as exactly as the PyTorch path: it works in float32,
    so float64 logits stay on that path (as do CPU tensors and layouts it cannot index)."""
    return (AVAILABLE and logits.is_cuda and logits.dtype in (torch.bfloat16, torch.float16, torch.float32)
            and logits.stride(1) == 1)


def softmax_grad_(logits: Tensor, targets: Tensor, scale: Tensor) -> Tensor:
    """Overwrite ``logits`` (N, V), unit stride along V, with ``scale`` x d(summed CE) / d logits
    and return the per-row loss (N,) in float32 (0 for ignored rows). ``scale`` is a 0-d
    float32 tensor on the logits' device (no host sync)."""
    if logits.stride(1) != 1:
        raise ValueError("softmax_grad_ needs unit stride along the vocabulary")
    return torch.ops.rayfleet.softmax_grad_(logits, targets, scale)
