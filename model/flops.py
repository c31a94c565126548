"""Parameter and FLOP counts from the config alone (valid for sharded models too).

FLOPs per token follow the PaLM MFU convention (Chowdhery et al. 2022, appendix B):

    flops/token = 6 * N + 12 * L * H * Q * T

* N: parameters that take part in a matmul per token (Kaplan et al. 2020 "C = 6N"):
  attention projections, the dense MLP or the router plus the top_k *active* experts,
  and the output head. The token-embedding lookup, learned position table, RMSNorm
  weights and memory-token init do no matmul and are left out. A tied embedding counts
  once, as the head.
* 12 L H Q T: attention scores and weighted values (2 matmuls x 2 FLOPs x 3 for
  forward + backward) with H heads of width Q attending over T keys. Like PaLM we do
  not halve T for the causal mask; with a sliding window T = min(seq_len, W + S).
* With recurrent memory the blocks also process 2M memory positions per segment, so the
  block terms are scaled by (segment_len + 2M) / segment_len and T is the segment length
  the blocks see; the head runs on data tokens only.
"""

from __future__ import annotations

from rayfleet.model.config import ModelConfig


def attention_params(c: ModelConfig) -> int:
    """Weights of one attention layer (fused qkv + output projection)."""
    return c.dim * (c.n_heads + 2 * c.kv_heads) * c.head_dim + c.n_heads * c.head_dim * c.dim


def expert_params(c: ModelConfig) -> int:
    """Weights of one SwiGLU expert."""
    return 3 * c.dim * c.moe_hidden


def ffn_params(c: ModelConfig, layer: int, active: bool) -> int:
    """Weights of block ``layer``'s FFN (only the top_k experts when ``active``)."""
    if not c.is_moe_layer(layer):
        return 3 * c.dim * c.ffn_hidden
    experts = c.top_k if active else c.n_experts
    return c.dim * c.n_experts + experts * expert_params(c)


def param_counts(c: ModelConfig) -> tuple[int, int]:
    """(total, active) parameter counts of the unsharded model.

    Active counts only top_k of the n_experts experts of each MoE layer: the parameters
    one token actually uses.
    """
    def count(active: bool) -> int:
        n = c.vocab_size * c.dim * (1 if c.tie_embeddings else 2) + c.dim  # embeddings, final norm
        n += c.max_seq_len * c.dim if c.positions == "learned" else 0
        n += c.memory_tokens * c.dim
        for layer in range(c.n_layers):
            n += attention_params(c) + ffn_params(c, layer, active) + 2 * c.dim
        return n

    return count(active=False), count(active=True)


def matmul_params(c: ModelConfig) -> tuple[int, int]:
    """(per position in the blocks, per token in the head) active matmul parameters."""
    blocks = sum(attention_params(c) + ffn_params(c, layer, True) for layer in range(c.n_layers))
    return blocks, c.vocab_size * c.dim


def flops_per_token(c: ModelConfig, seq_len: int) -> int:
    """Training FLOPs (forward + backward) per data token at sequence length ``seq_len``."""
    blocks, head = matmul_params(c)
    ctx, ratio = seq_len, 1.0
    if c.memory_tokens > 0:
        assert c.segment_len is not None
        ctx = min(seq_len, c.segment_len) + 2 * c.memory_tokens
        ratio = (c.segment_len + 2 * c.memory_tokens) / c.segment_len
    if c.window is not None:
        ctx = min(ctx, c.window + c.sinks + c.memory_tokens)  # read memory = sinks
    attn = 12 * c.n_layers * c.n_heads * c.head_dim * ctx
    return round(ratio * (6 * blocks + attn) + 6 * head)
