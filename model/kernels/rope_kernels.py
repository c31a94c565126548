"""The Triton kernels of model/kernels/triton_rope.py (imported only where Triton is installed).

A module of their own because @triton.jit functions find the helpers they call among their
module's globals. Each program takes BLOCK_T tokens of one head: a (BLOCK_T, d) tile read and
written with contiguous, vectorised accesses along d, split into its even and odd lanes in
registers (strided loads of every other lane ran at 200 GB/s on an H100). Loading the angles
once for several heads per program was no faster (bench/rope_kernel.py).
"""

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
            g = tl.load(dq_ptr + _tile(rows, T, q_sb, q_st, q_sh, head, 2 * HALF), mask=inside[:, None], other=0.0)
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
