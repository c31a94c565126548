"""The cross-entropy gradient step of the fused head on its own: the in-place Triton kernel
(model/kernels/cross_entropy.py) at several launch shapes against the compiled PyTorch version it replaces
(model/loss.py's _chunk_grad), on the bf16 logits of a dense (16 x 1024 tokens) and a MoE
(8 x 1024) training step, vocabulary 50304.

Bytes counted: the kernel must read the N x V logits once and write N x V gradients once; the
PyTorch version writes a second tensor. GB/s below is that floor (2 N V x 2 bytes) over the
time, for every row, so the rows compare directly with each other and with the copy rate.

    python bench/ce_kernel.py --out bench/results/ce_kernel.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rayfleet.model import loss as loss_mod  # noqa: E402
from rayfleet.model.kernels import cross_entropy as triton_ce  # noqa: E402
from cuda_timing import median_ms  # noqa: E402

VOCAB = 50304


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="16384,8192")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "ce_kernel.json"))
    args = parser.parse_args()
    assert triton_ce.AVAILABLE
    kernel = triton_ce._register()
    rows = []
    for n in (int(r) for r in args.rows.split(",")):
        torch.manual_seed(0)
        base = (torch.randn(n, VOCAB, device="cuda") * 3).to(torch.bfloat16)
        targets = torch.randint(0, VOCAB, (n,), device="cuda")
        scale = torch.tensor(1.0 / n, device="cuda")
        ref_loss, ref_grad = loss_mod._compiled_chunk_grad()(base, targets, scale)
        floor_gb = 2 * n * VOCAB * 2 / 1e9

        def fresh() -> torch.Tensor:
            return base.clone()

        def row(name: str, ms: float, err: float | None = None) -> None:
            r = {"rows": n, "vocab": VOCAB, "variant": name, "ms": ms, "gb_per_s": floor_gb / (ms / 1e3)}
            if err is not None:
                r["rel_error_vs_compiled"] = err
            rows.append(r)
            print(json.dumps(r), flush=True)

        compiled = loss_mod._compiled_chunk_grad()
        row("compiled-pytorch", median_ms(lambda x: compiled(x, targets, scale), args.repeats, fresh))
        row("copy (floor: read + write)", median_ms(lambda x: torch.empty_like(x).copy_(x), args.repeats, fresh))
        for block in (1024, 2048, 4096, 8192):
            for warps in (4, 8, 16):
                loss = torch.empty(n, device="cuda")

                def launch(x: torch.Tensor, block: int = block, warps: int = warps, loss: torch.Tensor = loss) -> None:
                    kernel[(n,)](x, x.stride(0), targets, loss, scale, VOCAB,
                                 IGNORE=triton_ce.IGNORE_INDEX, BLOCK=block, num_warps=warps)

                try:
                    x = fresh()
                    launch(x)
                    err = float((x.float() - ref_grad.float()).norm() / ref_grad.float().norm())
                    lerr = float((loss.sum() - ref_loss).abs() / ref_loss.abs())
                    row(f"triton block={block} warps={warps}", median_ms(launch, args.repeats, fresh), max(err, lerr))
                except Exception as error:  # a launch shape the chip refuses
                    print(f"block={block} warps={warps}: {type(error).__name__}: {error}"[:300], flush=True)
        x = fresh()
        out = triton_ce.softmax_grad_(x, targets, scale)
        op_ms = median_ms(lambda x: triton_ce.softmax_grad_(x, targets, scale), args.repeats, fresh)
        row("softmax_grad_ (the op, default shape)", op_ms,
            float((x.float() - ref_grad.float()).norm() / ref_grad.float().norm()))
        del base, ref_grad, out, x
        torch.cuda.empty_cache()
    Path(args.out).write_text(json.dumps({"benchmark": "ce_kernel", "gpu": torch.cuda.get_device_name(0),
                                          "torch": torch.__version__, "results": rows}, indent=1))
    print(f"{'rows':>6} {'variant':<40} {'ms':>7} {'GB/s':>7} {'rel err':>8}")
    for r in rows:
        print(f"{r['rows']:>6} {r['variant']:<40} {r['ms']:>7.3f} {r['gb_per_s']:>7.0f} "
              f"{r.get('rel_error_vs_compiled', float('nan')):>8.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
