"""RoPE on the q/k/v projection of one dense_124m layer (batch 16 x 1024, 12 heads of 64, bf16),
forward and backward on their own: the Triton kernels of model/kernels/rope.py at several launch
shapes (tokens per program x warps) against the compiled PyTorch version they replace (positions.apply_rope on q and k, the
backward's inverse rotation fused by inductor with the concatenation into the qkv gradient),
and against a plain copy of the same bytes (the floor).

Bytes counted per pass: forward reads q and k from qkv and writes them (2 x 2 x B T H d x 2 bytes);
backward reads dq, dk, dv and writes the qkv gradient (2 x 3 x B T H d x 2). The backward's
gradients come in the attention kernels' layout: (B, H, T, d) tensors, here contiguous.

    python bench/rope_kernel.py --out bench/results/rope_kernel.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rayfleet.model.kernels import rope as triton_rope  # noqa: E402
from rayfleet.model.positions import _rotate, rope_angles, rope_inv_freq  # noqa: E402
from cuda_timing import median_ms  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "rope_kernel.json"))
    args = parser.parse_args()
    assert triton_rope.AVAILABLE
    import triton

    fwd_kernel, bwd_kernel = triton_rope._register()
    b, t, h, d = args.batch, args.seq, args.heads, args.head_dim
    torch.manual_seed(0)
    qkv = torch.randn(b, t, 3 * h, d, device="cuda", dtype=torch.bfloat16)
    cos, sin = (c.cuda() for c in rope_angles(torch.arange(t), rope_inv_freq(d, 10000.0)))
    dq, dk, dv = (torch.randn(b, h, t, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    dq, dk, dv = (g.transpose(1, 2) for g in (dq, dk, dv))  # (B, T, H, d) views, as SDPA hands them
    elements = b * t * h * d
    traffic = {"forward": 2 * 2 * elements * 2, "backward": 2 * 3 * elements * 2}

    c2, s2 = cos[:, None], sin[:, None]

    @torch.compile
    def torch_fwd(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _rotate(x[:, :, :h], c2, s2), _rotate(x[:, :, h:2 * h], c2, s2)

    @torch.compile
    def torch_bwd(gq: torch.Tensor, gk: torch.Tensor, gv: torch.Tensor) -> torch.Tensor:
        return torch.cat((_rotate(gq, c2, -s2), _rotate(gk, c2, -s2), gv), dim=2)

    want_q, want_k = torch_fwd(qkv)
    want_grad = torch_bwd(dq, dk, dv)
    rows: list[dict[str, Any]] = []

    def add(name: str, direction: str, ms: float, **extra: Any) -> None:
        row = {"impl": name, "pass": direction, "ms": ms, "gb_s": traffic[direction] / ms / 1e6, **extra}
        rows.append(row)
        print(json.dumps(row), flush=True)

    add("compiled pytorch", "forward", median_ms(lambda: torch_fwd(qkv), args.repeats))
    add("compiled pytorch", "backward", median_ms(lambda: torch_bwd(dq, dk, dv), args.repeats))
    src = torch.empty(traffic["forward"] // 4, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    add("copy (floor)", "forward", median_ms(lambda: dst.copy_(src), args.repeats))
    src = torch.empty(traffic["backward"] // 4, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    add("copy (floor)", "backward", median_ms(lambda: dst.copy_(src), args.repeats))

    q, k = torch.empty_like(want_q), torch.empty_like(want_k)
    grad = torch.empty(b, t, 3 * h, d, device="cuda", dtype=torch.bfloat16)
    for block_t in (16, 32, 64, 128):
        for warps in (2, 4, 8):
            rows_grid = triton.cdiv(b * t, block_t)

            def fwd() -> None:
                fwd_kernel[(rows_grid, 2 * h)](qkv, q, k, cos, sin, b * t, t, *qkv.stride()[:3], cos.stride(0),
                                               HQ=h, HK=h, HALF=d // 2, BLOCK_T=block_t, num_warps=warps)

            def bwd() -> None:
                bwd_kernel[(rows_grid, 3 * h)](
                    dq, dk, dv, grad, cos, sin, b * t, t, *dq.stride()[:3], *dk.stride()[:3], *dv.stride()[:3],
                    cos.stride(0), HQ=h, HK=h, HALF=d // 2, BLOCK_T=block_t, num_warps=warps)

            fwd()
            bwd()
            torch.cuda.synchronize()
            errors = {"max_abs_diff_q": float((q.float() - want_q.float()).abs().max()),
                      "max_abs_diff_grad": float((grad.float() - want_grad.float()).abs().max())}
            shape = {"block_t": block_t, "num_warps": warps,
                     "default": (block_t, warps) == (triton_rope.BLOCK_T, triton_rope.NUM_WARPS)}
            add("triton", "forward", median_ms(fwd, args.repeats), **shape, **errors)
            add("triton", "backward", median_ms(bwd, args.repeats), **shape)
    doc = {"benchmark": "rope_kernel", "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
           "triton": triton.__version__, "shape": {"batch": b, "seq": t, "heads": h, "head_dim": d},
           "results": rows}
    Path(args.out).write_text(json.dumps(doc, indent=1))
    print(f"\n{'impl':<18} {'launch':<12} {'pass':<9} {'ms':>7} {'GB/s':>7}")
    for r in rows:
        launch = f"{r['block_t']}x{r['num_warps']}w" if "block_t" in r else ""
        print(f"{r['impl']:<18} {launch:<12} {r['pass']:<9} {r['ms']:>7.4f} {r['gb_s']:>7.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
