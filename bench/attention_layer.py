"""One attention layer of a training step on its own: dense_124m's Attention (wqkv GEMM, RoPE,
causal attention, wo GEMM) forward + backward, compiled, bf16, batch 16 x 1024 tokens, under
variants of the RoPE rotation and of the SDPA kernel. It isolates what the whole-step profile
shows as the RoPE backward (the rotation's inverse fused with the concatenation into the wqkv
gradient: 174 us per layer against 49 us for the forward on an H100).

    rope       interleaved  pairs (x[2i], x[2i+1]) as model/positions.py, compiled PyTorch
               triton       the same pairs through model/kernels/rope.py's kernels (the model's
                            path on CUDA)
               half         pairs (x[i], x[i + d/2]) (transformers' rotate_half) through the
                            model's same autograd function (inverse-rotation backward):
                            contiguous halves instead of even/odd lanes
               none         no rotation: the floor for the layer's other work
    kernel     cudnn | flash | efficient: SDPA's backend, forced

    python bench/attention_layer.py --out bench/results/attention_layer.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import rayfleet.model.attention as attention_mod  # noqa: E402
import rayfleet.model.positions as positions_mod  # noqa: E402
from rayfleet.model.kernels import rope as triton_rope  # noqa: E402
from rayfleet.model import get_preset  # noqa: E402
from rayfleet.model.attention import Attention, attention_context  # noqa: E402
from rayfleet.model.masks import MaskSpec  # noqa: E402
from rayfleet.model.positions import Positions, apply_rope  # noqa: E402

_ROTATE = positions_mod._rotate
_TRITON = triton_rope.AVAILABLE


def _rotate_half(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """transformers' rotate_half pairing, in positions._rotate's signature (the model's _Rope
    autograd function calls it for the forward and, with -sin, for the backward)."""
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    c, s = cos.float(), sin.float()
    return torch.cat((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).to(x.dtype)


def use_rope(name: str) -> None:
    """Switch the rotation the model's attention applies (the model's own path: use_rope("triton"))."""
    positions_mod._rotate = _rotate_half if name == "half" else _ROTATE
    triton_rope.AVAILABLE = _TRITON and name == "triton"
    attention_mod.apply_rope = (lambda x, cos, sin: x) if name == "none" else apply_rope


ROPES = ("interleaved", "triton", "half", "none")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "attention_layer.json"))
    args = parser.parse_args()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    device = torch.device("cuda")
    config = dataclasses.replace(get_preset("dense_124m"), max_seq_len=args.seq)
    torch.manual_seed(0)
    layer = Attention(config).to(device, torch.bfloat16)
    positions = Positions(config).to(device)
    ctx = attention_context(config, positions, torch.arange(args.seq, device=device), MaskSpec(), torch.bfloat16)
    x = torch.randn(args.batch, args.seq, config.dim, device=device, dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn_like(x)
    rows = []
    reference = None
    for rope in ROPES:
        for kernel in ("cudnn", "flash", "efficient"):
            if rope != "interleaved" and kernel != "cudnn":
                continue
            backend = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
                       "efficient": SDPBackend.EFFICIENT_ATTENTION}[kernel]
            use_rope(rope)
            torch._dynamo.reset()

            def step(inp: Tensor, backend: Any = backend) -> Tensor:
                with sdpa_kernel(backend):
                    return layer(inp, ctx)

            compiled = torch.compile(step)
            row: dict[str, Any] = {"rope": rope, "kernel": kernel, "batch": args.batch, "seq": args.seq}
            try:
                times = []
                for i in range(args.repeats + 5):
                    x.grad = None
                    layer.zero_grad(set_to_none=True)
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    out = compiled(x)
                    out.backward(grad)
                    end.record()
                    torch.cuda.synchronize()
                    if i >= 5:
                        times.append(start.elapsed_time(end))
                row["ms"] = statistics.median(times)
                if rope in ("interleaved", "triton"):
                    if reference is None:
                        reference = (out.detach().float(), x.grad.float())
                    else:
                        row["rel_error_vs_cudnn"] = max(
                            float((a - b.float()).norm() / a.norm()) for a, b in zip(reference, (out.detach(), x.grad)))
            except Exception as error:
                row["error"] = f"{type(error).__name__}: {error}"[:300]
            rows.append(row)
            print(json.dumps(row), flush=True)
    use_rope("triton")
    Path(args.out).write_text(json.dumps({"benchmark": "attention_layer", "gpu": torch.cuda.get_device_name(0),
                                          "torch": torch.__version__, "results": rows}, indent=1))
    print(f"{'rope':<12} {'kernel':<10} {'ms (fwd+bwd, 1 layer)':>22}")
    for r in rows:
        print(f"{r['rope']:<12} {r['kernel']:<10} {r.get('ms', float('nan')):>22.3f} {r.get('error', '')[:60]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
