"""The dense and dropless-MoE forward+backward trace into one graph (no graph breaks,
no host syncs), so torch.compile can fuse them on GPU. backend="eager" only traces:
it checks compile-friendliness without needing a compiler."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from rayfleet.model import Transformer, get_preset


@pytest.mark.parametrize("name,overrides,dtype", [
    ("tiny", {}, torch.float32),  # is_causal SDPA path
    ("tiny", {"window": 8, "sinks": 2, "positions": "alibi"}, torch.float32),  # explicit-mask SDPA
    # grouped GEMM path; torch._grouped_mm's meta kernel wants bf16, like the Hopper kernel
    ("tiny_moe", {"expert_backend": "grouped_mm"}, torch.bfloat16),
    ("tiny_moe", {"expert_backend": "grouped_mm", "capacity_factor": 1.25}, torch.bfloat16),
])
def test_forward_backward_compiles_without_graph_breaks(name: str, overrides: dict[str, object],
                                                        dtype: torch.dtype) -> None:
    torch._dynamo.reset()
    model = Transformer(dataclasses.replace(get_preset(name), **overrides)).to(dtype)
    tokens = torch.randint(0, 256, (2, 32))
    eager = model(tokens, tokens)
    compiled = torch.compile(model, backend="eager", fullgraph=True)(tokens, tokens)
    (compiled.loss + compiled.aux_loss).backward()
    torch.testing.assert_close(compiled.loss, eager.loss)
    assert all(p.grad is not None for p in model.parameters())


def test_flex_attention_path_traces_into_one_graph() -> None:
    """The CUDA path for window / sinks / ALiBi (flex_attention with a block mask and an ALiBi
    score_mod) traces without graph breaks: the block mask is built in the graph and
    flex_attention is traced, not the separately compiled wrapper used in eager mode.
    Forward only: flex_attention has no CPU backward (the GPU tests cover it)."""
    torch._dynamo.reset()
    config = dataclasses.replace(get_preset("tiny"), window=8, sinks=2, positions="alibi", attn_backend="flex")
    model = Transformer(config)
    tokens = torch.randint(0, 256, (2, 32))
    with torch.no_grad():
        eager = model(tokens, tokens)
        compiled = torch.compile(model, backend="eager", fullgraph=True)(tokens, tokens)
    torch.testing.assert_close(compiled.loss, eager.loss)
