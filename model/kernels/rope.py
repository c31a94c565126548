"""RoPE on the fused q/k/v projection as Triton kernels (CUDA only): one pass forward, one backward.

Forward ``rope_qk``: from the projection's output qkv (B, T, Hq + 2 Hk, d) it writes the rotated
q (B, T, Hq, d) and k (B, T, Hk, d); v stays a view of qkv. Backward ``rope_qkv_backward``: from
the attention kernel's gradients dq, dk, dv (any strides) it writes the whole qkv gradient
(B, T, Hq + 2 Hk, d): dq and dk rotated back (by the opposite angles), dv copied. That is the
"concatenation" of the three gradients, which autograd needs anyway, with the inverse rotation
done on the way; every element is read once and written once.

Compiled from PyTorch code, the backward is one generated kernel of 174 us per layer of
dense_124m (batch 16 x 1024, bf16, H100) for 150 MB of traffic, about 3.5x the time that
traffic takes at the device's copy bandwidth (bench/results/gpu_profiles_h100_pytorch_rope.txt); the
forward 49 us for 100 MB. The pairing is the model's (positions.apply_rope): interleaved (x[2i],
x[2i+1]), rotated by p * theta_i in float32 from the float64 tables of positions.Positions.

Each program takes BLOCK_T tokens of one head: a (BLOCK_T, d) tile read and written with
contiguous, vectorised accesses along d, split into its even and odd lanes in registers
(strided loads of every other lane run at 200 GB/s on an H100). Loading the angles once for
several heads per program is no faster (bench/rope_kernel.py).

``AVAILABLE`` is False where Triton or CUDA is missing (or RAYFLEET_ROPE_KERNEL=0), and
``handles(qkv)`` False for what the kernels do not cover (float64, head sizes that are not a
power of two, CPU tensors): attention.py keeps positions.apply_rope for those.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

from rayfleet.model.kernels.enabled import triton_enabled

# 16 tokens of one head per program, 4 warps: among the fastest of 12 launch shapes on an H100
# (bench/rope_kernel.py, dense_124m's layer: forward 79 us, backward 107 us, against 131 us and
# 250 us for the compiled PyTorch code; whole training step 1.03x, bench/results/rope_step_ab.json).
BLOCK_T = 16
NUM_WARPS = 4

# Decided once at import (a plain flag: torch.compile reads it without tracing a cache).
AVAILABLE = triton_enabled("RAYFLEET_ROPE_KERNEL")

if AVAILABLE:
    import triton
    import triton.language as tl

    @triton.jit
    def _tile(rows, T, sb, st, sh, head, D: tl.constexpr):
        # element offsets of a (BLOCK_T, D) tile: head ``head`` of flattened rows b * T + t
        b = (rows // T).to(tl.int64)
        t = (rows % T).to(tl.int64)
        return (b * sb + t * st + head * sh)[:, None] + tl.arange(0, D)[None, :]

    @triton.jit
    def _angles(cos_ptr, sin_ptr, rows, T, cos_st, mask, HALF: tl.constexpr):
        trig = (rows % T)[:, None] * cos_st + tl.arange(0, HALF)[None, :]
        c = tl.load(cos_ptr + trig, mask=mask, other=1.0).to(tl.float32)
        s = tl.load(sin_ptr + trig, mask=mask, other=0.0).to(tl.float32)
        return c, s

    @triton.jit
    def _rotate(x, c, s, sign, BLOCK_T: tl.constexpr, HALF: tl.constexpr):
        # pairs (x[2i], x[2i+1]) of a (BLOCK_T, 2 HALF) tile rotated by angles of cos c, sin sign * s
        x0, x1 = tl.split(tl.reshape(x, (BLOCK_T, HALF, 2)))
        s = s * sign
        return tl.reshape(tl.join(x0 * c - x1 * s, x0 * s + x1 * c), (BLOCK_T, 2 * HALF))

    @triton.jit
    def _rope_fwd_kernel(qkv_ptr, q_ptr, k_ptr, cos_ptr, sin_ptr, n_rows, T, sb, st, sh, cos_st,
                         HQ: tl.constexpr, HK: tl.constexpr, HALF: tl.constexpr, BLOCK_T: tl.constexpr):
        head = tl.program_id(1)
        rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
        inside = rows < n_rows
        x = tl.load(qkv_ptr + _tile(rows, T, sb, st, sh, head, 2 * HALF), mask=inside[:, None], other=0.0)
        c, s = _angles(cos_ptr, sin_ptr, rows, T, cos_st, inside[:, None], HALF)
        y = _rotate(x.to(tl.float32), c, s, 1.0, BLOCK_T, HALF)
        if head < HQ:  # outputs contiguous (B, T, heads, d)
            out = _tile(rows, n_rows, 0, HQ * 2 * HALF, 2 * HALF, head, 2 * HALF)
            tl.store(q_ptr + out, y.to(q_ptr.dtype.element_ty), mask=inside[:, None])
        else:
            out = _tile(rows, n_rows, 0, HK * 2 * HALF, 2 * HALF, head - HQ, 2 * HALF)
            tl.store(k_ptr + out, y.to(k_ptr.dtype.element_ty), mask=inside[:, None])

    @triton.jit
    def _rope_bwd_kernel(dq_ptr, dk_ptr, dv_ptr, out_ptr, cos_ptr, sin_ptr, n_rows, T,
                         q_sb, q_st, q_sh, k_sb, k_st, k_sh, v_sb, v_st, v_sh, cos_st,
                         HQ: tl.constexpr, HK: tl.constexpr, HALF: tl.constexpr, BLOCK_T: tl.constexpr):
        head = tl.program_id(1)
        rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
        inside = rows < n_rows
        out = _tile(rows, n_rows, 0, (HQ + 2 * HK) * 2 * HALF, 2 * HALF, head, 2 * HALF)
        if head < HQ + HK:  # dq, dk: rotated back, by -p * theta_i
            if head < HQ:
                g = tl.load(dq_ptr + _tile(rows, T, q_sb, q_st, q_sh, head, 2 * HALF), mask=inside[:, None],
                            other=0.0)
            else:
                g = tl.load(dk_ptr + _tile(rows, T, k_sb, k_st, k_sh, head - HQ, 2 * HALF), mask=inside[:, None],
                            other=0.0)
            c, s = _angles(cos_ptr, sin_ptr, rows, T, cos_st, inside[:, None], HALF)
            y = _rotate(g.to(tl.float32), c, s, -1.0, BLOCK_T, HALF)
            tl.store(out_ptr + out, y.to(out_ptr.dtype.element_ty), mask=inside[:, None])
        else:  # dv: copied
            g = tl.load(dv_ptr + _tile(rows, T, v_sb, v_st, v_sh, head - HQ - HK, 2 * HALF), mask=inside[:, None],
                        other=0.0)
            tl.store(out_ptr + out, g.to(out_ptr.dtype.element_ty), mask=inside[:, None])


@functools.lru_cache(maxsize=1)
def _register() -> tuple[Any, Any]:
    """Register the two ops once (where ``AVAILABLE``); returns the raw @triton.jit kernels
    (forward, backward)."""
    from torch.library import triton_op, wrap_triton

    @triton_op("rayfleet::rope_qk", mutates_args=())
    def rope_qk(qkv: Tensor, cos: Tensor, sin: Tensor, n_q: int, n_k: int) -> tuple[Tensor, Tensor]:
        b, t, _, d = qkv.shape
        q = qkv.new_empty(b, t, n_q, d)
        k = qkv.new_empty(b, t, n_k, d)
        grid = (triton.cdiv(b * t, BLOCK_T), n_q + n_k)
        wrap_triton(_rope_fwd_kernel)[grid](
            qkv, q, k, cos, sin, b * t, t, qkv.stride(0), qkv.stride(1), qkv.stride(2), cos.stride(0),
            HQ=n_q, HK=n_k, HALF=d // 2, BLOCK_T=BLOCK_T, num_warps=NUM_WARPS)
        return q, k

    @triton_op("rayfleet::rope_qkv_backward", mutates_args=())
    def rope_qkv_backward(dq: Tensor, dk: Tensor, dv: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        b, t, n_q, d = dq.shape
        n_k = dk.shape[2]
        out = dq.new_empty(b, t, n_q + 2 * n_k, d)
        grid = (triton.cdiv(b * t, BLOCK_T), n_q + 2 * n_k)
        wrap_triton(_rope_bwd_kernel)[grid](
            dq, dk, dv, out, cos, sin, b * t, t, *dq.stride()[:3], *dk.stride()[:3], *dv.stride()[:3],
            cos.stride(0), HQ=n_q, HK=n_k, HALF=d // 2, BLOCK_T=BLOCK_T, num_warps=NUM_WARPS)
        return out

    return _rope_fwd_kernel, _rope_bwd_kernel


if AVAILABLE:
    _register()


def handles(qkv: Tensor) -> bool:
    """Whether the kernels cover this (B, T, heads, d) projection: CUDA, 16/32-bit floats, unit
    stride along d and d a power of two (the kernels' lanes); positions.apply_rope otherwise."""
    d = qkv.shape[-1]
    return (AVAILABLE and qkv.is_cuda and qkv.dim() == 4 and qkv.dtype in (torch.bfloat16, torch.float16, torch.float32)
            and qkv.stride(-1) == 1 and d >= 4 and d & (d - 1) == 0)


class _RopeQKV(torch.autograd.Function):
    """(q, k, v) of qkv (B, T, Hq + 2 Hk, d): q and k rotated (new tensors), v a view of qkv."""

    @staticmethod
    def forward(ctx, qkv: Tensor, cos: Tensor, sin: Tensor, n_q: int, n_k: int  # type: ignore[override]
                ) -> tuple[Tensor, Tensor, Tensor]:
        ctx.save_for_backward(cos, sin)
        q, k = torch.ops.rayfleet.rope_qk(qkv, cos, sin, n_q, n_k)
        return q, k, qkv[:, :, n_q + n_k:]

    @staticmethod
    def backward(ctx, dq: Tensor, dk: Tensor, dv: Tensor  # type: ignore[override]
                 ) -> tuple[Tensor, None, None, None, None]:
        cos, sin = ctx.saved_tensors  # an unused output's gradient comes as zeros (autograd's default)
        return torch.ops.rayfleet.rope_qkv_backward(dq, dk, dv, cos, sin), None, None, None, None


def rope_qkv(qkv: Tensor, cos: Tensor, sin: Tensor, n_q: int, n_k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Split qkv (B, T, n_q + 2 n_k, d) into q, k, v (B, T, heads, d) with q and k rotated by the
    angles whose cos and sin (T, d/2) are given (positions.apply_rope's pairing and result)."""
    return _RopeQKV.apply(qkv, cos, sin, n_q, n_k)
