"""Named configurations, as functions (torchtitan style).


A job YAML names a preset and a dict of overrides:
    config = dataclasses.replace(get_preset(name), **overrides)
"""

from __future__ import annotations

from typing import Callable

from rayfleet.model.config import ModelConfig

GPT2_VOCAB = 50304  # GPT-2's 50257 tokens padded to a multiple of 128 (nanoGPT) for fast matmuls
# Tokens per chunk of the fused head + cross-entropy for the GPU presets: a 16 x 1024 step in one
# chunk ran 2% faster on an H100 than in 8 chunks of 2048 (472k vs 462k tok/s, dense_124m, bf16,
# compiled, bench/gpu_throughput.py) for 0.8 GiB more (1.6 GB of bf16 logits and as much gradient).
LOSS_CHUNK = 16384


def tiny() -> ModelConfig:
    """Small dense model for CPU tests and demos (~0.1M parameters, seq 128, GQA)."""
    return ModelConfig(vocab_size=256, dim=64, n_layers=2, n_heads=4, n_kv_heads=2,
                       max_seq_len=128, mlp_hidden=128, positions="rope")


def tiny_moe() -> ModelConfig:
    """tiny with 8 experts, top-2, every layer MoE: for CPU tests and the CPU demo."""
    return ModelConfig(vocab_size=256, dim=64, n_layers=2, n_heads=4, n_kv_heads=2,
                       max_seq_len=128, mlp_hidden=128, positions="rope",
                       n_experts=8, top_k=2, expert_hidden=64)


def dense_124m() -> ModelConfig:
    """GPT-2 small class: 12 layers, dim 768, 12 heads, seq 1024 (~124M parameters).

    The SwiGLU hidden size 2048 gives 3 * 768 * 2048 weights, the same as GPT-2's
    2 * 768 * 3072 GELU MLP; RoPE replaces the 0.8M learned position table.
    """
    return ModelConfig(vocab_size=GPT2_VOCAB, dim=768, n_layers=12, n_heads=12,
                       max_seq_len=1024, mlp_hidden=2048, positions="rope",
                       loss_chunk_tokens=LOSS_CHUNK)


def moe_8x() -> ModelConfig:
    """Small MoE: 8 experts, top-2, in all 12 layers of a dim-768 model.

    Expert hidden 832 (a multiple of 64 for tensor cores) gives ~251M total and ~113M
    active parameters (targets: ~245M / ~114M): active = 38.6M tied embedding
    + 12 x (2.36M attention + 2 x 1.92M experts + 6K router).
    """
    return ModelConfig(vocab_size=GPT2_VOCAB, dim=768, n_layers=12, n_heads=12,
                       max_seq_len=1024, mlp_hidden=2048, positions="rope",
                       n_experts=8, top_k=2, moe_every=1, expert_hidden=832,
                       loss_chunk_tokens=LOSS_CHUNK)


PRESETS: dict[str, Callable[[], ModelConfig]] = {
    "tiny": tiny,
    "tiny_moe": tiny_moe,
    "dense_124m": dense_124m,
    "moe_8x": moe_8x,
}


def get_preset(name: str) -> ModelConfig:
    """The config of preset ``name``; ``KeyError`` naming the valid presets otherwise."""
    try:
        factory = PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; valid presets: {', '.join(sorted(PRESETS))}") from None
    return factory()
