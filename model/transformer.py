"""Decoder-only language model: embeddings -> pre-norm blocks -> RMSNorm -> tied head.

    model = Transformer(get_preset("tiny"))
    out = model(tokens, targets)            # LMOutput(logits=None, loss, aux_loss, memory)
    (out.loss + out.aux_loss).backward()    # aux_loss is already weighted by its coefs
    model.generate(prompt, max_new_tokens=32)

Everything the forward pass does is driven by ``ModelConfig``; with ``memory_tokens``
set, ``forward`` runs the recurrent-memory loop of ``memory.py`` over the sequence.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rayfleet.model import flops
from rayfleet.model.attention import attention_context
from rayfleet.model.block import Block, RMSNorm
from rayfleet.model.config import ModelConfig
from rayfleet.model.kv_cache import KVCache
from rayfleet.model.loss import linear_cross_entropy
from rayfleet.model.masks import MaskSpec
from rayfleet.model.memory import recurrent_forward
from rayfleet.model.moe import GroupedExperts
from rayfleet.model.positions import LearnedPositions, Positions


class LMOutput(NamedTuple):
    """What ``Transformer.forward`` returns."""

    logits: Tensor | None  # (B, T, vocab); None when targets are given (fused loss)
    loss: Tensor | None  # mean cross-entropy over counted targets (ignore index -100)
    aux_loss: Tensor  # MoE load-balancing + z-loss, weighted; 0 for dense models
    memory: Tensor | None  # (B, M, dim) memory after the last segment (RMT), detached


class Transformer(nn.Module):
    """Decoder-only transformer LM (dense or MoE, optional recurrent memory)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.positions = Positions(config)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = None if config.tie_embeddings else nn.Linear(config.dim, config.vocab_size, bias=False)
        self.memory_init = (nn.Parameter(torch.empty(config.memory_tokens, config.dim))
                            if config.memory_tokens > 0 else None)
        # Read-memory tokens sit at positions 0..M-1 of every segment: they act as sinks.
        self.spec = MaskSpec(config.window, config.sinks + config.memory_tokens)
        self.reset_parameters()

    @property
    def head_weight(self) -> Tensor:
        """Output projection (vocab, dim); the token embedding when tied (Press & Wolf 2017)."""
        return self.tok_embeddings.weight if self.output is None else self.output.weight

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """GPT-2 / Llama init: N(0, init_std) everywhere, RMSNorm weights 1, and the
        projections that write into the residual stream scaled by 1/sqrt(2 * n_layers)
        so the residual variance does not grow with depth (Radford et al. 2019, 2.3)."""
        std = self.config.init_std
        residual_std = std / math.sqrt(2 * self.config.n_layers)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding, LearnedPositions)):
                nn.init.normal_(module.weight, std=std)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
            elif isinstance(module, GroupedExperts):
                nn.init.normal_(module.w13, std=std)
                nn.init.normal_(module.w2, std=residual_std)
        for block in self.layers:
            assert isinstance(block, Block)
            nn.init.normal_(block.attn.wo.weight, std=residual_std)
            w2 = getattr(block.ffn, "w2", None)
            if isinstance(w2, nn.Linear):
                nn.init.normal_(w2.weight, std=residual_std)
        if self.memory_init is not None:
            nn.init.normal_(self.memory_init, std=std)

    # --- forward ------------------------------------------------------------------------
    def forward(self, tokens: Tensor, targets: Tensor | None = None,
                memory: Tensor | None = None) -> LMOutput:
        """Logits or loss for ``tokens`` (B, T) (see ``LMOutput``).

        ``targets`` (B, T) switches to the fused chunked head + cross-entropy and returns
        no logits. ``memory`` (B, M, dim) continues a recurrent-memory sequence.
        """
        if self.config.memory_tokens > 0:
            h, aux, memory = recurrent_forward(self, tokens, memory)
            return self.head(h, targets, aux, memory)
        if memory is not None:
            raise ValueError("memory was passed but config.memory_tokens == 0")
        h, aux = self.run_blocks(self.tok_embeddings(tokens))
        return self.head(h, targets, aux)

    def run_blocks(self, x: Tensor, start: int = 0, caches: list[KVCache] | None = None,
                   spec: MaskSpec | None = None) -> tuple[Tensor, Tensor]:
        """Positions + blocks + final norm over embedded inputs ``x`` (B, T, dim) that sit
        at absolute positions start .. start+T-1, under mask ``spec`` (default: the
        config's). Returns (hidden, weighted aux loss)."""
        cfg, t = self.config, x.shape[1]
        if cfg.positions == "learned" and start + t > cfg.max_seq_len:
            raise ValueError(f"learned positions: sequence of {start + t} tokens exceeds "
                             f"max_seq_len={cfg.max_seq_len}")
        pos = torch.arange(start, start + t, device=x.device)
        additive = self.positions.embed(pos)
        if additive is not None:
            x = x + additive.to(x.dtype)
        x = self.dropout(x)
        ctx = attention_context(cfg, self.positions, pos, spec or self.spec, x.dtype, start,
                                cached=caches is not None)
        aux = torch.zeros((), device=x.device)
        for i, layer in enumerate(self.layers):
            x, layer_aux = layer(x, ctx, None if caches is None else caches[i])
            aux = aux + layer_aux
        return self.norm(x), aux

    def head(self, h: Tensor, targets: Tensor | None, aux: Tensor,
             memory: Tensor | None = None) -> LMOutput:
        """Logits, or (with targets) the fused chunked cross-entropy, from final hidden ``h``."""
        if targets is None:
            return LMOutput(F.linear(h, self.head_weight), None, aux, memory)
        loss = linear_cross_entropy(h.reshape(-1, h.shape[-1]), self.head_weight,
                                    targets.reshape(-1), self.config.loss_chunk_tokens)
        return LMOutput(None, loss, aux, memory)

    # --- generation ---------------------------------------------------------------------
    def new_caches(self, max_len: int) -> list[KVCache]:
        """Fresh KV caches for sequences up to ``max_len`` tokens (rolling with a window)."""
        slots = self.spec.cache_slots
        slots = max_len if slots is None else min(slots, max_len)
        return [KVCache(slots, self.spec) for _ in self.layers]

    def decode(self, tokens: Tensor, start: int, caches: list[KVCache]) -> Tensor:
        """Logits (B, T, vocab) of a chunk at positions start.., attending to ``caches``."""
        h, _ = self.run_blocks(self.tok_embeddings(tokens), start, caches)
        return F.linear(h, self.head_weight)

    @torch.no_grad()
    def generate(self, tokens: Tensor, max_new_tokens: int, temperature: float = 0.0,
                 top_k: int | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Extend ``tokens`` (B, T) by ``max_new_tokens`` using a KV cache.

        ``temperature == 0`` is greedy decoding; otherwise sample from
        softmax(logits / temperature), restricted to the ``top_k`` most likely tokens if
        given. The prompt is processed in one chunk, then one token per step.
        """
        if self.config.memory_tokens > 0:
            raise ValueError("generate() does not support recurrent memory (memory_tokens > 0)")
        total = tokens.shape[1] + max_new_tokens
        if self.config.positions == "learned" and total > self.config.max_seq_len:
            raise ValueError(f"learned positions: {total} tokens exceed max_seq_len={self.config.max_seq_len}")
        caches = self.new_caches(total)
        out, start, chunk = [tokens], 0, tokens
        for _ in range(max_new_tokens):
            logits = self.decode(chunk, start, caches)[:, -1].float()
            start += chunk.shape[1]
            chunk = _pick(logits, temperature, top_k, generator)
            out.append(chunk)
        return torch.cat(out, dim=1)

    # --- accounting ---------------------------------------------------------------------
    def param_counts(self) -> tuple[int, int]:
        """(total, active) parameters of the full (unsharded) model; see ``flops.py``."""
        return flops.param_counts(self.config)

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token, 6 * N_active + 12 * L * H * Q * T (PaLM); see ``flops.py``."""
        return flops.flops_per_token(self.config, seq_len)


def _pick(logits: Tensor, temperature: float, top_k: int | None,
          generator: torch.Generator | None) -> Tensor:
    """Next token (B, 1) from last-position logits (B, vocab)."""
    if temperature <= 0.0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)
