"""Hugging Face transformers models of the same shapes as ours, with our initial weights.

`hf_twin(ours)` builds a Llama (dense) or Mixtral (MoE) model from transformers' config
classes (no download, nothing from the Hub) whose every matmul has our shapes, then copies
our freshly initialised weights into it, so both start as the same function of the same
parameters: same initial loss, and any difference in the training curves comes from the
implementations. Mapping, ours -> transformers:

    tok_embeddings (tied head)   -> model.embed_tokens (tie_word_embeddings=True)
    attn.wqkv = [q; k; v]        -> q_proj, k_proj, v_proj; q and k rows permuted per head
    attn.wo                      -> o_proj
    ffn w1, w3, w2 (SwiGLU)      -> mlp.gate_proj, up_proj, down_proj
    router.gate (E, D)           -> mlp.gate.weight
    experts w13 = [w1; w3] (E, 2H, D), w2 -> mlp.experts.gate_up_proj, down_proj
    attn_norm, ffn_norm, norm    -> input_layernorm, post_attention_layernorm, model.norm

RoPE: ours rotates interleaved pairs (x[2i], x[2i+1]) (RoFormer); transformers' Llama rotates
(x[i], x[i + d/2]) ("rotate_half"). Permuting the q and k rows of each head from interleaved
to half-split order (the permutation of transformers' convert_llama_weights_to_hf.py, run in
reverse) makes the two compute the same scores.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from rayfleet.model import ModelConfig, Transformer


def hf_config(c: ModelConfig, experts_implementation: str = "grouped_mm") -> Any:
    """A transformers LlamaConfig / MixtralConfig of the same shapes as ``c``."""
    if c.positions != "rope" or c.window is not None or c.memory_tokens or not c.tie_embeddings:
        raise ValueError("the Hugging Face twin covers tied-embedding RoPE models with causal attention")
    common: dict[str, Any] = dict(
        vocab_size=c.vocab_size, hidden_size=c.dim, num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads, num_key_value_heads=c.kv_heads, head_dim=c.head_dim,
        max_position_embeddings=c.max_seq_len, rms_norm_eps=c.norm_eps, initializer_range=c.init_std,
        tie_word_embeddings=True, use_cache=False, attention_dropout=0.0,
        rope_parameters={"rope_type": "default", "rope_theta": c.rope_base},
        bos_token_id=None, eos_token_id=None, pad_token_id=None)
    if c.n_experts == 0:
        from transformers import LlamaConfig

        return LlamaConfig(intermediate_size=c.ffn_hidden, attention_bias=False, mlp_bias=False, **common)
    if c.moe_every != 1 or c.capacity_factor is not None or not c.router_renormalize:
        raise ValueError("the Mixtral twin covers dropless top-k MoE in every layer, renormalised gates")
    from transformers import MixtralConfig

    # output_router_logits=False: transformers' fastest setting, no balancing loss (ours
    # computes its aux and z losses in every step, so that costs us, not them).
    return MixtralConfig(intermediate_size=c.moe_hidden, num_local_experts=c.n_experts,
                         num_experts_per_tok=c.top_k, router_jitter_noise=0.0, sliding_window=None,
                         output_router_logits=False, **common)


def interleaved_to_half(w: Tensor, n_heads: int) -> Tensor:
    """Rows of a q or k projection (H * d, D) from interleaved RoPE pairs to rotate_half order."""
    rows, cols = w.shape
    d = rows // n_heads
    return w.view(n_heads, d // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


@torch.no_grad()
def load_ours_into(hf: nn.Module, ours: Transformer) -> None:
    """Copy ``ours``'s parameters into the transformers twin ``hf`` (see the module docstring)."""
    c = ours.config
    base = hf.model
    base.embed_tokens.weight.copy_(ours.tok_embeddings.weight)
    base.norm.weight.copy_(ours.norm.weight)
    q_rows, kv_rows = c.n_heads * c.head_dim, c.kv_heads * c.head_dim
    for mine, theirs in zip(ours.layers, base.layers):
        q, k, v = mine.attn.wqkv.weight.split([q_rows, kv_rows, kv_rows])
        theirs.self_attn.q_proj.weight.copy_(interleaved_to_half(q, c.n_heads))
        theirs.self_attn.k_proj.weight.copy_(interleaved_to_half(k, c.kv_heads))
        theirs.self_attn.v_proj.weight.copy_(v)
        theirs.self_attn.o_proj.weight.copy_(mine.attn.wo.weight)
        theirs.input_layernorm.weight.copy_(mine.attn_norm.weight)
        theirs.post_attention_layernorm.weight.copy_(mine.ffn_norm.weight)
        if c.n_experts == 0:
            theirs.mlp.gate_proj.weight.copy_(mine.ffn.w1.weight)
            theirs.mlp.up_proj.weight.copy_(mine.ffn.w3.weight)
            theirs.mlp.down_proj.weight.copy_(mine.ffn.w2.weight)
        else:
            experts = mine.ffn.experts
            theirs.mlp.gate.weight.copy_(mine.ffn.router.gate.weight)
            theirs.mlp.experts.gate_up_proj.copy_(experts.w13)
            theirs.mlp.experts.down_proj.copy_(experts.w2)
    if hf.lm_head.weight is not base.embed_tokens.weight:
        raise RuntimeError("the transformers twin did not tie its head to the embedding")


def hf_twin(ours: Transformer, experts_implementation: str = "grouped_mm") -> nn.Module:
    """A transformers Llama / Mixtral with ``ours``'s shapes and initial weights (float32, CPU)."""
    from transformers import AutoModelForCausalLM

    config = hf_config(ours.config)
    kwargs: dict[str, Any] = {"attn_implementation": "sdpa"}
    if ours.config.n_experts:
        kwargs["experts_implementation"] = experts_implementation
    hf = AutoModelForCausalLM.from_config(config, dtype=torch.float32, **kwargs)
    load_ours_into(hf, ours)
    return hf


def hf_loss(hf: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
    """transformers' own training loss on our (inputs, targets): ``shift_labels`` are the targets
    as they are (its default shift would drop the last position)."""
    targets = targets.contiguous()
    return hf(input_ids=inputs, labels=targets, shift_labels=targets, use_cache=False).loss


if __name__ == "__main__":  # python bench/hf_models.py: the twins compute our function (CPU, float32)
    import dataclasses

    from rayfleet.model import get_preset

    for name in ("dense_124m", "moe_8x"):
        cfg = dataclasses.replace(get_preset(name), n_layers=2)
        torch.manual_seed(0)
        ours = Transformer(cfg)
        twin = hf_twin(ours, "eager")
        tokens = torch.randint(0, 256, (2, 65))
        with torch.no_grad():
            a = ours(tokens[:, :-1], tokens[:, 1:]).loss
            b = hf_loss(twin, tokens[:, :-1], tokens[:, 1:])
            la = ours(tokens[:, :-1]).logits
            lb = twin(input_ids=tokens[:, :-1]).logits
        print(f"{name}: loss ours {a.item():.6f} hf {b.item():.6f}; max |logit diff| {(la - lb).abs().max().item():.2e}")
