"""Explicit float64 reference implementations, written independently of model/.

Everything here is deliberately naive (python loops, complex numbers, explicit softmax)
so that it can serve as ground truth for the fused kernels.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rayfleet.model import ModelConfig, Transformer


def ref_mask(q_positions: list[int], k_positions: list[int], window: int | None, sinks: int) -> Tensor:
    """Boolean mask built entry by entry from the definition."""
    m = torch.zeros(len(q_positions), len(k_positions), dtype=torch.bool)
    for i, q in enumerate(q_positions):
        for j, k in enumerate(k_positions):
            if 0 <= k <= q:
                m[i, j] = window is None or q - k < window or k < sinks
    return m


def ref_slopes(n: int) -> list[float]:
    """ALiBi slopes from Press et al. 2021 (reference repository's get_slopes)."""
    def pow2(m: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(m) - 3)))  # = 2^(-8/m)
        return [start * start ** i for i in range(m)]

    if math.log2(n).is_integer():
        return pow2(n)
    p = 2 ** math.floor(math.log2(n))
    return pow2(p) + ref_slopes(2 * p)[0::2][: n - p]


def ref_rope(x: Tensor, positions: Tensor, base: float, scale: float = 1.0) -> Tensor:
    """RoPE as complex rotation: (x_2j + i x_2j+1) * exp(i p theta_j), theta_j = base^(-2j/d)/scale."""
    d = x.shape[-1]
    theta = torch.tensor([base ** (-2 * j / d) / scale for j in range(d // 2)], dtype=torch.float64)
    xc = torch.view_as_complex(x.double().reshape(*x.shape[:-1], d // 2, 2).contiguous())
    rot = torch.polar(torch.ones_like(theta), positions.double()[:, None] * theta)  # (T, d/2)
    return torch.view_as_real(xc * rot).reshape(x.shape)


def ref_sinusoidal(t: int, d: int) -> Tensor:
    pe = torch.zeros(t, d, dtype=torch.float64)
    for p in range(t):
        for i in range(0, d, 2):
            pe[p, i] = math.sin(p / 10000 ** (i / d))
            if i + 1 < d:
                pe[p, i + 1] = math.cos(p / 10000 ** (i / d))
    return pe


def ref_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, bias: Tensor | None = None) -> Tensor:
    """softmax(q k^T / sqrt(d) + bias, masked) v with q (B,H,T,d), k/v (B,H,S,d)."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if bias is not None:
        scores = scores + bias
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def rmsnorm(x: Tensor, w: Tensor, eps: float) -> Tensor:
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


def swiglu(x: Tensor, w1: Tensor, w3: Tensor, w2: Tensor) -> Tensor:
    a = x @ w1.T
    return ((a * torch.sigmoid(a)) * (x @ w3.T)) @ w2.T


def ref_moe(x: Tensor, gate: Tensor, w1: Tensor, w3: Tensor, w2: Tensor, top_k: int,
            renormalize: bool = True) -> Tensor:
    """Per-token, per-expert loop over x (N, D)."""
    probs = torch.softmax(x @ gate.T, dim=-1)
    rows = []
    for t in range(x.shape[0]):
        top = torch.topk(probs[t], top_k).indices.tolist()
        norm = sum(probs[t, e] for e in top) if renormalize else 1.0
        rows.append(sum(probs[t, e] / norm * swiglu(x[t], w1[e], w3[e], w2[e]) for e in top))
    return torch.stack(rows)


def reference_forward(model: Transformer, tokens: Tensor) -> Tensor:
    """Logits of ``model`` on ``tokens`` (B, T), recomputed explicitly in float64.

    Uses the model's parameters (cast, so gradients flow back to them).
    """
    c: ModelConfig = model.config
    p = {k: v.double() for k, v in model.named_parameters()}
    b, t = tokens.shape
    hd, h, kv = c.head_dim, c.n_heads, c.kv_heads
    x = p["tok_embeddings.weight"][tokens]
    if c.positions == "sinusoidal":
        x = x + ref_sinusoidal(t, c.dim)
    if c.positions == "learned":
        x = x + p["positions.learned.weight"][:t]
    pos = torch.arange(t)
    mask = ref_mask(list(range(t)), list(range(t)), c.window, c.sinks)
    bias = None
    if c.positions == "alibi":
        slopes = torch.tensor(ref_slopes(h), dtype=torch.float64)
        bias = -slopes[:, None, None] * (pos[:, None] - pos[None, :]).double()
    for layer in range(c.n_layers):
        pre = f"layers.{layer}."
        y = rmsnorm(x, p[pre + "attn_norm.weight"], c.norm_eps)
        wq, wk, wv = p[pre + "attn.wqkv.weight"].split([h * hd, kv * hd, kv * hd])
        q = (y @ wq.T).view(b, t, h, hd).transpose(1, 2)
        k = (y @ wk.T).view(b, t, kv, hd).transpose(1, 2)
        v = (y @ wv.T).view(b, t, kv, hd).transpose(1, 2)
        if c.positions == "rope":
            scale = c.rope_scaling if c.rope_scaling_type == "linear" else 1.0
            q, k = ref_rope(q, pos, c.rope_base, scale), ref_rope(k, pos, c.rope_base, scale)
        k, v = k.repeat_interleave(h // kv, dim=1), v.repeat_interleave(h // kv, dim=1)
        o = ref_attention(q, k, v, mask, bias).transpose(1, 2).reshape(b, t, h * hd)
        x = x + o @ p[pre + "attn.wo.weight"].T
        y = rmsnorm(x, p[pre + "ffn_norm.weight"], c.norm_eps)
        if c.is_moe_layer(layer):
            e = pre + "ffn.experts."
            w1, w3 = p[e + "w13"].chunk(2, dim=1)  # stored stacked: [w1; w3] per expert
            out = ref_moe(y.reshape(b * t, -1), p[pre + "ffn.router.gate.weight"], w1, w3,
                          p[e + "w2"], c.top_k, c.router_renormalize)
            x = x + out.view(b, t, -1)
        else:
            f = pre + "ffn."
            x = x + swiglu(y, p[f + "w1.weight"], p[f + "w3.weight"], p[f + "w2.weight"])
    x = rmsnorm(x, p["norm.weight"], c.norm_eps)
    head = p["tok_embeddings.weight"] if c.tie_embeddings else p["output.weight"]
    return x @ head.T
