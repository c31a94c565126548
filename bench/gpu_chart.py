"""The GPU throughput table as a chart: tokens/s of every setup, ours beside the transformers
twin, one panel per model, MFU on each bar. Reads the JSON files bench/gpu_throughput.py wrote
(rows of the same name from a later file replace earlier ones) and writes a PNG.

    pip install '.[bench]'   # matplotlib
    python bench/gpu_chart.py bench/results/gpu_throughput_h100_bf16_vs_hf_pytorch_rope.json \
        bench/results/gpu_throughput_h100_mixed_and_eager_vs_hf.json --out bench/results/gpu_throughput.png
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ORDER = [("bf16", "cudagraphs"), ("bf16", "compile"), ("mixed", "compile"), ("bf16", "eager"), ("mixed", "eager")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench/gpu_chart.py needs matplotlib: pip install '.[bench]'", file=sys.stderr)
        return 2
    rows, machine, dates = {}, {}, set()
    for path in args.results:
        doc = json.loads(Path(path).read_text())
        machine, dates = doc.get("machine", machine), dates | {doc.get("date", "")}
        rows.update({r["name"]: r for r in doc["results"] if "tokens_per_s" in r})
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharey=False)
    for ax, kind in zip(axes, ("dense", "moe")):
        labels = [f"{p}\n{m}" for p, m in ORDER]
        for offset, impl, color in ((-0.2, "ours", "#1f77b4"), (0.2, "hf", "#ff7f0e")):
            xs, ys, mfus = [], [], []
            for i, (p, m) in enumerate(ORDER):
                r = rows.get(f"{kind}/{impl}/{p}/{m}")
                if r:
                    xs.append(i + offset)
                    ys.append(r["tokens_per_s"] / 1e3)
                    mfus.append(r["mfu"])
            bars = ax.bar(xs, ys, width=0.4, color=color, label="rayfleet" if impl == "ours" else "transformers")
            for bar, mfu in zip(bars, mfus):
                ax.annotate(f"{mfu:.0%}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                            va="bottom", fontsize=8)
        ax.set_xticks(range(len(ORDER)), labels)
        ax.set_title({"dense": "dense 124M, batch 16 x 1024", "moe": "MoE 8 experts top-2, batch 8 x 1024"}[kind])
        ax.set_ylabel("thousand tokens/s (MFU on the bars)")
        ax.legend(loc="upper right")
    fig.suptitle(f"Training throughput on one {machine.get('gpu', 'GPU')}, torch {machine.get('torch', '?')}, "
                 f"transformers {machine.get('transformers', '?')} ({', '.join(sorted(d for d in dates if d))})")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
