"""The MoE layer's expert GEMMs on their own: is torch._grouped_mm the slow part of moe_8x?

Shapes of moe_8x at batch 8 x 1024 (bench/gpu_throughput.py): 16384 routed rows (8192 tokens,
top-2) over 8 experts, dim 768, expert hidden 832, bf16. For each of the experts' two GEMMs
(w1|w3 stacked: 768 -> 1664; w2: 832 -> 768) and each of its three passes it times one call of:
  - grouped: torch._grouped_mm, the model's kernel, with the operands laid out as autograd hands
             them (forward: the weight as a transposed view; input gradient: the weight as
             stored; weight gradient: x.T as a view);
  - mm:      one dense torch.mm with the same FLOPs (all rows through one weight): the rate
             the GEMM shape itself allows, with no grouping;
  - bmm:     torch.bmm over 8 equal groups (what padding every group to one size would run).
Row counts per expert come from three routings: equal, a random router's top-2, and a skewed
one (the largest expert 4x the smallest). Passes are timed as separate calls: autograd's backward of
_grouped_mm computes both gradients even when only one is asked for.

--autotune adds the grouped GEMM compiled with mode="max-autotune-no-cudagraphs" (inductor's
Triton grouped-GEMM template against the ATen kernel), forward and both gradients together,
against the same through ATen.

    python bench/moe_gemm.py --out bench/results/moe_gemm.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from cuda_timing import median_ms  # noqa: E402

KERNELS = ("grouped", "mm", "bmm")
PASSES = ("forward", "input grad", "weight grad")


def routings(rows: int, experts: int, tokens: int, top_k: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    equal = torch.full((experts,), rows // experts, dtype=torch.long)
    chosen = torch.randn(tokens, experts, generator=gen).topk(top_k, dim=-1).indices.reshape(-1)
    router = torch.bincount(chosen, minlength=experts)
    weights = torch.linspace(1.6, 0.4, experts)
    skew = (weights / weights.sum() * rows).floor().long()
    skew[-1] += rows - skew.sum()
    return {"equal": equal, "router": router, "skewed": skew}


def expert_gemms(dim: int, hidden: int, rows: int, experts: int, counts: torch.Tensor
                 ) -> Iterator[tuple[str, int, int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Each expert GEMM of one layer (w1|w3 stacked, then w2) as (name, in size k, out size n,
    group offsets, x (rows, k), its output's gradient gy (rows, n), weights w (E, n, k) stored as
    nn.Linear's), random bf16 on CUDA."""
    offs = counts.cumsum(0).to(torch.int32).cuda()
    for name, k, n in (("w1|w3", dim, 2 * hidden), ("w2", hidden, dim)):
        x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
        gy = torch.randn(rows, n, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(experts, n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
        yield name, k, n, offs, x, gy, w


def gemm_rows(dim: int, hidden: int, rows: int, experts: int, counts: torch.Tensor, repeats: int
              ) -> list[dict[str, Any]]:
    out = []
    for name, k, n, offs, x, gy, w in expert_gemms(dim, hidden, rows, experts, counts):
        wd = w[0].t().contiguous()  # (k, n): one weight for all rows
        xb, gyb, wb = x.view(experts, -1, k), gy.view(experts, -1, n), w.mT
        calls: dict[tuple[str, str], Callable[[], Any]] = {
            ("grouped", "forward"): lambda: torch._grouped_mm(x, w.mT, offs=offs),
            ("grouped", "input grad"): lambda: torch._grouped_mm(gy, w, offs=offs),
            ("grouped", "weight grad"): lambda: torch._grouped_mm(x.t(), gy, offs=offs),
            ("mm", "forward"): lambda: x @ wd,
            ("mm", "input grad"): lambda: gy @ wd.t(),
            ("mm", "weight grad"): lambda: x.t() @ gy,
            ("bmm", "forward"): lambda: torch.bmm(xb, wb),
            ("bmm", "input grad"): lambda: torch.bmm(gyb, wb.mT),
            ("bmm", "weight grad"): lambda: torch.bmm(xb.mT, gyb),
        }
        for (kernel, phase), call in calls.items():
            ms = median_ms(call, repeats)
            out.append({"gemm": name, "kernel": kernel, "pass": phase, "ms": ms,
                        "tflops": 2 * rows * k * n / ms / 1e9})
    return out


def autotune_rows(dim: int, hidden: int, rows: int, experts: int, counts: torch.Tensor, repeats: int
                  ) -> list[dict[str, Any]]:
    out = []
    for name, k, n, offs, x, gy, w in expert_gemms(dim, hidden, rows, experts, counts):
        x.requires_grad_()
        w.requires_grad_()

        def gmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return torch._grouped_mm(a, b.mT, offs=offs)

        tuned = torch.compile(gmm, mode="max-autotune-no-cudagraphs", fullgraph=True)
        for kernel, fn in (("grouped", gmm), ("autotuned", tuned)):
            ms = median_ms(lambda: torch.autograd.grad(fn(x, w), (x, w), gy), repeats)
            out.append({"gemm": name, "kernel": kernel, "pass": "forward + both grads", "ms": ms,
                        "tflops": 3 * 2 * rows * k * n / ms / 1e9})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--hidden", type=int, default=832)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--autotune", action="store_true", help="add the max-autotune compiled grouped GEMM")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "moe_gemm.json"))
    args = parser.parse_args()
    rows = args.tokens * args.top_k
    results: dict[str, Any] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                               "args": vars(args), "routings": {}}
    per_layer: dict[str, dict[str, float]] = {}
    for routing, counts in routings(rows, args.experts, args.tokens, args.top_k).items():
        table = gemm_rows(args.dim, args.hidden, rows, args.experts, counts, args.repeats)
        results["routings"][routing] = {"counts": counts.tolist(), "rows": table}
        print(f"\n== routing {routing}: rows per expert {counts.tolist()}")
        print(f"{'gemm':6} {'pass':12} " + " ".join(f"{k:>15}" for k in KERNELS))
        for gemm in ("w1|w3", "w2"):
            for phase in PASSES:
                cells = {r["kernel"]: r for r in table if r["gemm"] == gemm and r["pass"] == phase}
                print(f"{gemm:6} {phase:12} " + " ".join(
                    f"{cells[k]['ms'] * 1e3:6.1f}us {cells[k]['tflops']:4.0f}TF" for k in KERNELS))
        per_layer[routing] = {k: sum(r["ms"] for r in table if r["kernel"] == k) for k in KERNELS}
        print("one layer, all six: " + ", ".join(f"{k} {v * 1e3:.0f}us" for k, v in per_layer[routing].items()),
              flush=True)
    results["per_layer_ms"] = per_layer
    if args.autotune:
        counts = routings(rows, args.experts, args.tokens, args.top_k)["router"]
        results["autotune"] = autotune_rows(args.dim, args.hidden, rows, args.experts, counts, args.repeats)
        print("\n== forward + both gradients through autograd, routing 'router'")
        for r in results["autotune"]:
            print(f"{r['gemm']:6} {r['kernel']:10} {r['ms'] * 1e3:6.1f}us {r['tflops']:4.0f}TF")
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
