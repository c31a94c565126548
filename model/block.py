"""A pre-norm transformer block: x + Attn(Norm(x)), then + FFN(Norm(.)).

Pre-norm (Xiong et al. 2020) trains stably without warm-up tricks; RMSNorm (Zhang &
Sennrich 2019) and the SwiGLU MLP (Shazeer 2020) follow Llama (Touvron et al. 2023).
The FFN is either the dense MLP or a mixture of experts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rayfleet.model.attention import Attention, AttentionContext
from rayfleet.model.config import ModelConfig
from rayfleet.model.kv_cache import KVCache
from rayfleet.model.moe import MoE


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in at least float32 (``F.rms_norm`` when torch has it)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        """Normalise the last dimension of ``x``."""
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        w = self.weight.to(xf.dtype)
        if hasattr(F, "rms_norm"):
            out = F.rms_norm(xf, (xf.shape[-1],), w, self.eps)
        else:  # torch < 2.4
            out = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + self.eps) * w
        return out.to(x.dtype)


class MLP(nn.Module):
    """Dense SwiGLU feed-forward: w2(silu(w1 x) * w3 x)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.w1 = nn.Linear(config.dim, config.ffn_hidden, bias=False)
        self.w3 = nn.Linear(config.dim, config.ffn_hidden, bias=False)
        self.w2 = nn.Linear(config.ffn_hidden, config.dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the MLP position-wise.

        w1 and w3 run as one matmul on their stacked weights (a copy of 2 x hidden x dim
        weights per call): one GEMM twice as wide, and one for their input gradient instead
        of two plus a sum."""
        a, b = F.linear(x, torch.cat((self.w1.weight, self.w3.weight))).chunk(2, dim=-1)
        return self.w2(F.silu(a) * b)


class Block(nn.Module):
    """One pre-norm residual block; ``forward`` returns (hidden, weighted MoE aux loss)."""

    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.dim, config.norm_eps)
        self.attn = Attention(config)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
        self.ffn: MLP | MoE = MoE(config) if config.is_moe_layer(layer) else MLP(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, ctx: AttentionContext, cache: KVCache | None = None) -> tuple[Tensor, Tensor]:
        """Run attention then the FFN, each as a residual branch."""
        x = x + self.dropout(self.attn(self.attn_norm(x), ctx, cache))
        h = self.ffn_norm(x)
        if isinstance(self.ffn, MoE):
            out, aux = self.ffn(h)
        else:
            out, aux = self.ffn(h), x.new_zeros((), dtype=torch.float32)
        return x + self.dropout(out), aux
