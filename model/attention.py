"""Multi-head / grouped-query attention on fused kernels.

Kernel choice, made once per forward in ``attention_context``:
* plain causal, no ALiBi: ``scaled_dot_product_attention(is_causal=True)``, which takes
  the Flash kernel on GPU (Dao 2023) and never materialises a mask;
* window / sinks / ALiBi on CUDA (or ``attn_backend="flex"``): ``flex_attention`` with a
  block mask (skips fully masked tiles) and an ALiBi ``score_mod``, compiled on CUDA;
* the same on CPU (``attn_backend="sdpa"`` or auto): SDPA with an explicit boolean or
  additive mask, because eager flex_attention materialises scores and has no CPU backward.
Grouped-query attention (Ainslie et al. 2023) shares each k/v head among
n_heads / n_kv_heads query heads via the kernels' ``enable_gqa``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from rayfleet.model.config import ModelConfig
from rayfleet.model.kernels import rope as rope_kernel
from rayfleet.model.kv_cache import KVCache
from rayfleet.model.masks import MaskSpec, additive_mask, dense_mask, mask_mod
from rayfleet.model.positions import Positions, alibi_bias, apply_rope

AttentionKernel = Literal["causal", "sdpa", "flex"]


@dataclass
class AttentionContext:
    """Per-forward attention inputs shared by all layers (computed once, not per layer)."""

    q_pos: Tensor  # (T,) absolute positions of the queries
    spec: MaskSpec
    kernel: AttentionKernel
    rope: tuple[Tensor, Tensor] | None = None  # cos, sin of shape (T, head_dim / 2)
    slopes: Tensor | None = None  # ALiBi slopes (n_heads,)
    sdpa_mask: Tensor | None = None  # bool (T, T) or additive (H, T, T), kernel "sdpa"
    block_mask: BlockMask | None = None  # kernel "flex"
    score_mod: Callable[..., Tensor] | None = None  # kernel "flex" with ALiBi
    start: int = 0  # position of the first query (KV-cache decoding)


def choose_kernel(config: ModelConfig, spec: MaskSpec, device: torch.device) -> AttentionKernel:
    """Which attention kernel serves this config on this device (see module docstring)."""
    if spec.is_causal_only and config.positions != "alibi":
        return "causal"
    if config.attn_backend == "flex" or (config.attn_backend == "auto" and device.type == "cuda"):
        return "flex"
    return "sdpa"


@functools.lru_cache(maxsize=32)
def _block_mask(spec: MaskSpec, q_len: int, kv_len: int, device: str) -> BlockMask:
    # Cached: building a block mask evaluates the predicate over all tiles, and the
    # shapes repeat every training step.
    return create_block_mask(mask_mod(spec, kv_len - q_len), None, None, q_len, kv_len,
                             device=device)


@functools.lru_cache(maxsize=1)
def _compiled_flex() -> Callable[..., Tensor]:
    # Without torch.compile flex_attention falls back to an unfused, score-materialising
    # implementation; compiled it generates a fused Triton kernel.
    return torch.compile(flex_attention, dynamic=False)


def attention_context(config: ModelConfig, positions: Positions, q_pos: Tensor,
                      spec: MaskSpec, dtype: torch.dtype, start: int = 0,
                      cached: bool = False) -> AttentionContext:
    """Everything attention needs for queries at ``q_pos`` = start .. start+T-1 (built once per forward).

    ``cached`` (KV-cache decoding) leaves the mask to each layer's cache, since it
    depends on the cache slots' positions.
    """
    kernel: AttentionKernel = "sdpa" if cached else choose_kernel(config, spec, q_pos.device)
    ctx = AttentionContext(q_pos=q_pos, spec=spec, kernel=kernel, rope=positions.rope_span(start, q_pos.numel()),
                           slopes=positions.alibi(), start=start)
    if cached or kernel == "causal":
        return ctx
    t = q_pos.numel()
    if kernel == "flex":
        # Inside a compiled model the mask is built in the graph (Dynamo does not trace caches).
        build = _block_mask.__wrapped__ if torch.compiler.is_compiling() else _block_mask
        ctx.block_mask = build(spec, t, t, str(q_pos.device))
        if ctx.slopes is not None:
            slopes = ctx.slopes

            def alibi_mod(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
                return score - slopes[h] * (q_idx - kv_idx)

            ctx.score_mod = alibi_mod
        return ctx
    ctx.sdpa_mask = _sdpa_mask(q_pos, q_pos, spec, ctx.slopes, dtype)
    return ctx


def _sdpa_mask(q_pos: Tensor, k_pos: Tensor, spec: MaskSpec, slopes: Tensor | None,
               dtype: torch.dtype) -> Tensor:
    mask = dense_mask(q_pos, k_pos, spec)
    if slopes is None:
        return mask
    return additive_mask(mask, alibi_bias(q_pos, k_pos, slopes), dtype)


class Attention(nn.Module):
    """Causal self-attention with a fused q/k/v projection and optional GQA."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.kv_heads, config.head_dim
        self.wqkv = nn.Linear(config.dim, (self.n_heads + 2 * self.n_kv_heads) * self.head_dim, bias=False)
        self.wo = nn.Linear(self.n_heads * self.head_dim, config.dim, bias=False)

    def forward(self, x: Tensor, ctx: AttentionContext, cache: KVCache | None = None) -> Tensor:
        """Self-attention of ``x`` (B, T, dim); with ``cache`` also attends to cached keys."""
        b, t, _ = x.shape
        qkv = self.wqkv(x).view(b, t, self.n_heads + 2 * self.n_kv_heads, self.head_dim)
        if ctx.rope is not None and rope_kernel.handles(qkv):
            # one Triton pass each way: q, k rotated out of qkv; their gradients rotated back
            # and written with v's into the wqkv gradient (see kernels/rope.py)
            q, k, v = rope_kernel.rope_qkv(qkv, *ctx.rope, self.n_heads, self.n_kv_heads)
        else:
            q, k, v = qkv.split([self.n_heads, self.n_kv_heads, self.n_kv_heads], dim=2)
            if ctx.rope is not None:
                # Rotated in the projection's (B, T, H, d) layout, then viewed as (B, H, T, d):
                # the attention kernels take the strided view, and their q/k/v gradients come
                # back in this same layout, so the backward rotation and the concatenation into
                # the wqkv gradient are one coalesced pass. Rotating after the transpose makes
                # that pass 6x slower than the forward rotation (H100, dense_124m, bf16, compiled).
                cos, sin = (c[:, None] for c in ctx.rope)  # (T, 1, d/2)
                q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        y = self.attend(q, k, v, ctx, cache)
        return self.wo(y.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))

    def attend(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext,
               cache: KVCache | None = None) -> Tensor:
        """softmax(q k^T / sqrt(d) + bias + mask) v for (B, H, T, d) inputs, on the chosen kernel."""
        gqa: dict[str, Any] = {"enable_gqa": True} if self.n_kv_heads != self.n_heads else {}
        if cache is not None:
            k, v, k_pos = cache.attend_and_store(k, v, ctx.start)
            mask = _sdpa_mask(ctx.q_pos, k_pos, ctx.spec, ctx.slopes, q.dtype)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **gqa)
        if ctx.kernel == "causal":
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, **gqa)
        if ctx.kernel == "flex":
            # Inside a torch.compile'd model flex_attention is traced and fused with the rest;
            # calling the separately compiled wrapper there would nest one compile in another.
            flex = _compiled_flex() if q.is_cuda and not torch.compiler.is_compiling() else flex_attention
            return flex(q, k, v, score_mod=ctx.score_mod, block_mask=ctx.block_mask, **gqa)
        mask = ctx.sdpa_mask
        if mask is not None and mask.dtype != torch.bool:
            mask = mask.to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **gqa)
