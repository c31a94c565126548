"""Position schemes: sinusoidal, learned, RoPE (with context scaling) and ALiBi.

All functions take explicit integer position tensors instead of assuming 0..T-1, so
the same code serves the full forward pass, KV-cache decoding (positions start at the
cache length) and recurrent-memory segments.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn

from rayfleet.model.config import ModelConfig, RopeScalingType


def sinusoidal_embedding(pos: Tensor, dim: int) -> Tensor:
    """Fixed sinusoidal embedding of "Attention Is All You Need" (Vaswani et al. 2017, 3.5).

    PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(p / 10000^(2i/d)).
    Returns a float32 tensor of shape ``pos.shape + (dim,)``.
    """
    half = torch.arange(0, dim, 2, device=pos.device, dtype=torch.float32)
    inv_freq = torch.exp(-math.log(10000.0) * half / dim)
    angles = pos.to(torch.float32)[..., None] * inv_freq  # (..., ceil(dim/2))
    out = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)  # interleave sin, cos
    return out[..., :dim]


class LearnedPositions(nn.Module):
    """Learned absolute position embeddings (GPT-2); positions must be < max_seq_len."""

    def __init__(self, max_seq_len: int, dim: int) -> None:
        super().__init__()
        self.max_seq_len = max_seq_len
        self.weight = nn.Parameter(torch.empty(max_seq_len, dim))

    def forward(self, pos: Tensor) -> Tensor:
        """Embedding rows for ``pos`` (no bounds check here: callers check shapes on the host)."""
        return self.weight[pos]


def rope_inv_freq(head_dim: int, base: float, scaling: float = 1.0,
                  scaling_type: RopeScalingType = "linear") -> Tensor:
    """Inverse frequencies theta_i = base^(-2i/d) of RoPE (Su et al. 2021, RoFormer), float64.

    ``scaling`` s > 1 extends the usable context by s:
    * ``"linear"`` (position interpolation, Chen et al. 2023): every frequency is divided by
      s, i.e. position p is rotated as if it were p / s.
    * ``"ntk"`` (NTK-aware scaling, bloc97 2023): base' = base * s^(d / (d - 2)); theta_0 = 1
      is unchanged and the lowest frequency theta_{d/2-1} is divided by exactly s.
    """
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim
    if scaling_type == "ntk" and scaling != 1.0:
        base = base * scaling ** (head_dim / (head_dim - 2))
    inv_freq = base ** (-exponents)
    if scaling_type == "linear" and scaling != 1.0:
        inv_freq = inv_freq / scaling
    return inv_freq


def rope_angles(pos: Tensor, inv_freq: Tensor) -> tuple[Tensor, Tensor]:
    """cos and sin of the rotation angles p * theta_i (float64), shape ``pos.shape + (d/2,)``.

    float64 so that large positions (p * theta ~ 1e5) keep their fractional part.
    """
    angles = pos.to(torch.float64)[..., None] * inv_freq.to(pos.device, torch.float64)
    return angles.cos(), angles.sin()


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    dtype = torch.promote_types(x.dtype, torch.float32)
    cos, sin = cos.to(dtype), sin.to(dtype)
    xf = x.to(dtype).unflatten(-1, (-1, 2))
    x0, x1 = xf[..., 0], xf[..., 1]
    out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return out.flatten(-2).to(x.dtype)


class _Rope(torch.autograd.Function):
    """The rotation, with its backward written as the rotation by the opposite angles.

    Autograd's own backward of the stack / select / flatten above is correct but compiles to
    a kernel 5x slower than the forward's (measured on an H100 under torch.compile: 247 us
    against 51 us per layer of dense_124m); the inverse rotation is the same kernel as the
    forward. cos and sin are constants (no gradient).
    """

    @staticmethod
    def forward(ctx, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(cos, sin)
        return _rotate(x, cos, sin)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        cos, sin = ctx.saved_tensors
        return _rotate(grad, cos, -sin), None, None


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (x[2i], x[2i+1]) of ``x`` (..., d) by the angles in cos/sin (..., d/2),
    which broadcast against ``x``'s leading dimensions: (T, d/2) for x (B, H, T, d), (T, 1, d/2)
    for x (B, T, H, d).

    Uses the interleaved pairing of the RoFormer paper. Computed in at least float32 and
    cast back, which keeps bf16 training accurate at long positions.
    """
    return _Rope.apply(x, cos, sin)


def alibi_slopes(n_heads: int) -> Tensor:
    """Per-head ALiBi slopes (Press et al. 2021, "Train Short, Test Long", section 3).

    For n a power of two: m_i = 2^(-8 i / n), i = 1..n. Otherwise take the slopes of the
    closest smaller power of two p, then every other slope of the 2p sequence for the
    remaining n - p heads (the rule of the authors' reference implementation).
    """

    def power_of_two(n: int) -> list[float]:
        return [2.0 ** (-8.0 * i / n) for i in range(1, n + 1)]

    if math.log2(n_heads).is_integer():
        slopes = power_of_two(n_heads)
    else:
        p = 2 ** math.floor(math.log2(n_heads))
        slopes = power_of_two(p) + power_of_two(2 * p)[0::2][: n_heads - p]
    return torch.tensor(slopes, dtype=torch.float32)


def alibi_bias(q_pos: Tensor, k_pos: Tensor, slopes: Tensor) -> Tensor:
    """Additive ALiBi bias -m_h * (q - k), shape (H, Tq, Tk), for causal attention."""
    dist = (q_pos[:, None] - k_pos[None, :]).to(slopes.dtype)
    return -slopes[:, None, None] * dist


class Positions(nn.Module):
    """Owns the position state of a model and hands out what each scheme needs.

    Additive schemes (sinusoidal, learned) are added to the token embeddings by
    ``embed``; RoPE angles and ALiBi slopes are consumed inside attention.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.kind = config.positions
        self.dim = config.dim
        self.learned = (LearnedPositions(config.max_seq_len, config.dim)
                        if self.kind == "learned" else None)
        self._rope_args = (config.head_dim, config.rope_base, config.rope_scaling,
                           config.rope_scaling_type)
        self.n_heads = config.n_heads
        # Frequencies stay float64: exact at any position. The angles' cos and sin are tabled
        # (float64) for the positions a training step uses, 0 .. max(max_seq_len, segment
        # tokens); positions past the table (long generation) are computed per call. Without
        # the table a compiled model recomputes float64 cos/sin for every element of q and k
        # in its fused RoPE kernels: measured on an H100 (bench/gpu_throughput.py, dense_124m,
        # bf16, compiled), RoPE then took 9.2 of the step's 40 ms.
        self.rope_table_len = max(config.max_seq_len, config.segment_tokens) if self.kind == "rope" else 0
        self.register_buffer("inv_freq", rope_inv_freq(*self._rope_args), persistent=False)
        self.register_buffer("slopes", alibi_slopes(config.n_heads), persistent=False)
        cos, sin = self._rope_table()
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def _rope_table(self) -> tuple[Tensor, Tensor]:
        return rope_angles(torch.arange(self.rope_table_len), rope_inv_freq(*self._rope_args))

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> Positions:
        """Follow device moves, but never let ``.to(bfloat16)`` round the constants."""
        super()._apply(fn, recurse)
        device = self.inv_freq.device
        self.inv_freq = rope_inv_freq(*self._rope_args).to(device)
        self.slopes = alibi_slopes(self.n_heads).to(device)
        self.rope_cos, self.rope_sin = (t.to(device) for t in self._rope_table())
        return self

    def embed(self, pos: Tensor) -> Tensor | None:
        """Additive embedding (T, dim) for absolute schemes, else None."""
        if self.kind == "sinusoidal":
            return sinusoidal_embedding(pos, self.dim)
        if self.kind == "learned":
            assert self.learned is not None
            return self.learned(pos)
        return None

    def rope(self, pos: Tensor) -> tuple[Tensor, Tensor] | None:
        """(cos, sin) for RoPE, else None."""
        return rope_angles(pos, self.inv_freq) if self.kind == "rope" else None

    def rope_span(self, start: int, length: int) -> tuple[Tensor, Tensor] | None:
        """(cos, sin) for RoPE at positions start .. start+length-1 (from the table), else None."""
        if self.kind != "rope":
            return None
        if start + length <= self.rope_table_len:
            return self.rope_cos[start:start + length], self.rope_sin[start:start + length]
        return rope_angles(torch.arange(start, start + length, device=self.inv_freq.device), self.inv_freq)

    def alibi(self) -> Tensor | None:
        """Per-head slopes for ALiBi, else None."""
        return self.slopes if self.kind == "alibi" else None
