"""Long-context attention on one GPU: sliding window, sinks and ALiBi on the fused path against
dense causal SDPA, through the model's own attention code (model/attention.py).

Shapes are dense_124m's attention (12 heads of 64, bf16), one sequence of T tokens, forward +
backward. Per T and variant: time (median of CUDA-event-timed repeats after warm-up),
tokens/s, speed against causal SDPA at the same T, and the peak memory the step allocates on
top of q, k, v. Variants:
    causal        SDPA is_causal (Flash kernel): the baseline
    window        sliding window of W=1024 keys, flex_attention with a block mask
    window+sinks  the same plus 4 attention sinks (StreamingLLM)
    alibi         causal with ALiBi, flex_attention score_mod
    alibi+window  ALiBi, window and sinks together
    *-sdpa-mask   the same pattern through SDPA with a materialised mask or ALiBi bias (the
                  unfused path the model takes on CPU): shows what the fused path saves
    causal-cudnn, causal-flash, causal-efficient, causal-flex
                  plain causal on each kernel PyTorch has (SDPA's backends forced, or
                  flex_attention with a causal block mask): which one the model should use
At the shortest T each flex variant is also checked against its explicit-mask SDPA twin.

    python bench/attention_long.py --lengths 8192,16384,32768 --out bench/results/attention_long.json
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rayfleet.model import get_preset  # noqa: E402
from rayfleet.model.attention import Attention, attention_context  # noqa: E402
from rayfleet.model.masks import MaskSpec  # noqa: E402
from rayfleet.model.positions import Positions  # noqa: E402

WINDOW, SINKS = 1024, 4
VARIANTS: dict[str, dict[str, Any]] = {
    "causal": {},
    "window": {"window": WINDOW},
    "window+sinks": {"window": WINDOW, "sinks": SINKS},
    "alibi": {"positions": "alibi"},
    "alibi+window": {"positions": "alibi", "window": WINDOW, "sinks": SINKS},
}
UNFUSED = ("window", "alibi")  # also run through SDPA with a materialised mask / bias
CAUSAL_KERNELS = {"causal-cudnn": "CUDNN_ATTENTION", "causal-flash": "FLASH_ATTENTION",
                  "causal-efficient": "EFFICIENT_ATTENTION", "causal-flex": None}


def context_for(overrides: dict[str, Any], t: int, backend: str, device: torch.device) -> tuple[Attention, Any]:
    config = dataclasses.replace(get_preset("dense_124m"), max_seq_len=t, attn_backend=backend, **overrides)
    attention = Attention(config).to(device)
    positions = Positions(config).to(device)
    spec = MaskSpec(config.window, config.sinks)
    ctx = attention_context(config, positions, torch.arange(t, device=device), spec, torch.bfloat16)
    return attention, ctx


def causal_context(name: str, t: int, device: torch.device) -> tuple[Attention, Any, Any]:
    """Plain causal attention on one named kernel: (attention, context, SDPA backend or None)."""
    from torch.nn.attention import SDPBackend

    from rayfleet.model.attention import _block_mask

    attention, ctx = context_for({}, t, "auto", device)
    backend = CAUSAL_KERNELS[name]
    if backend is None:
        ctx.kernel, ctx.block_mask = "flex", _block_mask(MaskSpec(), t, t, str(device))
        return attention, ctx, None
    return attention, ctx, getattr(SDPBackend, backend)


def bench_one(attention: Attention, ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              grad: torch.Tensor, repeats: int, backend: Any = None) -> tuple[float, float, torch.Tensor]:
    """(median ms of forward + backward, peak GiB above the inputs, output)."""
    from torch.nn.attention import sdpa_kernel

    def run() -> torch.Tensor:
        if backend is None:
            out = attention.attend(q, k, v, ctx)
        else:
            with sdpa_kernel(backend):
                out = attention.attend(q, k, v, ctx)
        out.backward(grad)
        return out

    for _ in range(3):
        run()
    torch.cuda.synchronize()
    q.grad = k.grad = v.grad = None
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = run()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
        q.grad = k.grad = v.grad = None
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30
    return statistics.median(times), peak, out.detach()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="8192,16384,32768")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--batch", type=int, default=1, help="sequences per call (16 = the dense training step)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "attention_long.json"))
    args = parser.parse_args()
    device = torch.device("cuda")
    # The eager path compiles flex_attention once per (length, mask, score_mod): more than
    # Dynamo's default of 8 recompiles, after which it would silently run unfused.
    torch._dynamo.config.cache_size_limit = 64
    heads, dim = get_preset("dense_124m").n_heads, get_preset("dense_124m").head_dim
    doc: dict[str, Any] = {"benchmark": "attention_long", "date": datetime.date.today().isoformat(),
                           "command": "python " + " ".join(sys.argv), "gpu": torch.cuda.get_device_name(0),
                           "torch": torch.__version__, "heads": heads, "head_dim": dim, "window": WINDOW,
                           "sinks": SINKS, "results": []}
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    lengths = [int(x) for x in args.lengths.split(",")]
    names = args.variants.split(",")
    rows = []
    for t in lengths:
        torch.manual_seed(0)
        b = args.batch
        q, k, v = (torch.randn(b, heads, t, dim, device=device, dtype=torch.bfloat16, requires_grad=True)
                   for _ in range(3))
        grad = torch.randn(b, heads, t, dim, device=device, dtype=torch.bfloat16)
        base_ms = None
        runs = [(name, "auto") for name in names if name in VARIANTS]
        runs += [(name, "sdpa") for name in names if name in UNFUSED]
        runs += [(name, "kernel") for name in names if name in CAUSAL_KERNELS]
        outputs: dict[str, torch.Tensor] = {}
        for name, backend in runs:
            label = f"{name}-sdpa-mask" if backend == "sdpa" else name
            row: dict[str, Any] = {"tokens": t, "batch": b, "variant": label}
            try:
                sdpa_backend = None
                if backend == "kernel":
                    attention, ctx, sdpa_backend = causal_context(name, t, device)
                else:
                    attention, ctx = context_for(VARIANTS[name], t, backend, device)
                row["kernel"] = ctx.kernel
                ms, peak, out = bench_one(attention, ctx, q, k, v, grad, args.repeats, sdpa_backend)
                row.update(ms=ms, tokens_per_s=b * t / (ms / 1e3), peak_gib=peak)
                if t == lengths[0]:
                    outputs[label] = out
            except torch.OutOfMemoryError:
                row["error"] = "out of memory"
            except Exception as error:
                row["error"] = f"{type(error).__name__}: {error}"[:500]
            torch.cuda.empty_cache()
            if name == "causal" and "ms" in row:
                base_ms = row["ms"]
            if base_ms and "ms" in row:
                row["speed_vs_causal"] = base_ms / row["ms"]
            rows.append(row)
            doc["results"] = rows
            out_path.write_text(json.dumps(doc, indent=1))
            print(json.dumps(row), flush=True)
        for name in UNFUSED:  # fused path = its unfused twin, at the shortest length
            fused, unfused = outputs.get(name), outputs.get(f"{name}-sdpa-mask")
            if fused is not None and unfused is not None:
                err = float((fused.float() - unfused.float()).norm() / unfused.float().norm())
                doc.setdefault("check_rel_error", {})[name] = err
        del q, k, v, grad, outputs
    out_path.write_text(json.dumps(doc, indent=1))
    print(f"{'T':>6} {'variant':<22} {'kernel':<7} {'ms':>8} {'tok/s':>10} {'vs causal':>9} {'peak GiB':>8}")
    for r in rows:
        if "ms" in r:
            print(f"{r['tokens']:>6} {r['variant']:<22} {r['kernel']:<7} {r['ms']:>8.2f} {r['tokens_per_s']:>10,.0f} "
                  f"{r.get('speed_vs_causal', float('nan')):>8.2f}x {r['peak_gib']:>8.2f}")
        else:
            print(f"{r['tokens']:>6} {r['variant']:<22} {r.get('error', '')[:50]}")
    print("fused vs explicit-mask SDPA (relative error):", doc.get("check_rel_error"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
