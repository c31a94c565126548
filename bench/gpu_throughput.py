"""Training throughput on one GPU: our dense and MoE models against transformers' Llama and Mixtral.

Every setup trains from the same initial weights (the transformers twin gets ours, see
bench/hf_models.py) on the same batches of the project's corpus (jobs/worker/data.py: the bytes of
Python's pydoc topics, vocabulary 50304), sequence 1024, with fused AdamW, gradient clipping
and the same learning-rate schedule, and records the loss of every step. A setup is
(kind, implementation, precision, mode):
    kind       dense (dense_124m, batch 16) | moe (moe_8x, batch 8)
    impl       ours | hf
    precision  mixed: fp32 weights, bf16 autocast | bf16: bf16 weights, no autocast
               | master: a bf16 working copy runs forward and backward, AdamW steps fp32 master
                 weights (jobs/worker/precision.py's WorkingCopy: a one-worker job's bf16-mixed)
    mode       eager | compile (torch.compile) | cudagraphs (torch.compile, mode="reduce-overhead")
               | autotune (torch.compile, mode="max-autotune": GEMM autotuning and CUDA graphs)
Throughput is taken over the steps after the warm-up (compilation, CUDA-graph recording) with
CUDA events, no host sync inside the window. MFU = tokens/s x FLOPs/token / peak, with
FLOPs/token from model/flops.py (PaLM: 6 x active matmul parameters + 12 L H Q T attention,
not halved for the causal mask) and the H100's dense bf16 peak, 989 TFLOP/s (datasheet).

    python bench/gpu_throughput.py --kinds dense --impls ours,hf --precisions mixed,bf16 \
        --modes eager,compile --out bench/results/gpu_throughput_dense.json

prints a table (ratios against the fastest transformers setup of the same kind, measured in
the same run) and writes every figure, loss curve and the machine to the JSON file.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from rayfleet.jobs.worker.data import StepBatches, corpus_tokens  # noqa: E402
from rayfleet.jobs.worker.precision import WorkingCopy  # noqa: E402
from rayfleet.model import Transformer, flops_per_token, get_preset  # noqa: E402

PEAK_TFLOPS = 989.0  # H100 SXM dense bf16, NVIDIA datasheet (the MFU denominator)
PRESET = {"dense": "dense_124m", "moe": "moe_8x"}
BATCH = {"dense": 16, "moe": 8}  # the batch sizes for both implementations


@dataclasses.dataclass(frozen=True)
class Setup:
    kind: str
    impl: str
    precision: str
    mode: str

    @property
    def name(self) -> str:
        return f"{self.kind}/{self.impl}/{self.precision}/{self.mode}"


@dataclasses.dataclass
class Options:
    seq: int
    steps: int
    eager_steps: int
    warmup: int
    lr: float
    overrides: dict[str, Any]
    batch: dict[str, int]


def build(setup: Setup, opts: Options, device: torch.device) -> tuple[Any, Callable[..., Any], Any]:
    """(model, forward callable, config) with the same initial weights for ours and the twin."""
    config = dataclasses.replace(get_preset(PRESET[setup.kind]), max_seq_len=max(opts.seq, 1024),
                                 **opts.overrides)
    torch.manual_seed(0)
    ours = Transformer(config)
    if setup.impl == "ours":
        model = ours
    else:
        from hf_models import hf_twin

        model = hf_twin(ours)
    model.to(device)
    if setup.precision == "bf16":
        model.to(torch.bfloat16)
    model.train()
    runner = model
    if setup.precision == "master":
        runner = WorkingCopy(model, torch.bfloat16)
    module = runner.module if isinstance(runner, WorkingCopy) else model
    forward: Any = module
    if setup.mode == "compile":
        forward = torch.compile(module)
    elif setup.mode == "cudagraphs":
        forward = torch.compile(module, mode="reduce-overhead")
    elif setup.mode == "autotune":
        forward = torch.compile(module, mode="max-autotune")
    if isinstance(runner, WorkingCopy):
        forward.working = runner  # type: ignore[union-attr]  (run_setup's step copies through it)
    return model, forward, config


def loss_of(setup: Setup, forward: Callable[..., Any], inputs: torch.Tensor, targets: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(training loss, language-model loss) of one batch."""
    if setup.impl == "ours":
        out = forward(inputs, targets)
        return out.loss + out.aux_loss, out.loss
    from hf_models import hf_loss

    loss = hf_loss(forward, inputs, targets)
    return loss, loss


def optimizer_for(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.95), eps=1e-8, fused=True)


def lr_at(step: int, steps: int, lr: float, warmup: int = 20) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup))))


def batches(kind: str, opts: Options, steps: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    data = StepBatches(corpus_tokens(), opts.seq, opts.batch[kind], seed=0)
    pairs = [data.batch(step) for step in range(steps)]
    return (torch.stack([p[0] for p in pairs]).to(device), torch.stack([p[1] for p in pairs]).to(device))


def run_setup(setup: Setup, opts: Options, device: torch.device, profile_dir: Path | None = None
              ) -> dict[str, Any]:
    steps = opts.eager_steps if setup.mode == "eager" else opts.steps
    inputs, targets = batches(setup.kind, opts, steps, device)
    model, forward, config = build(setup, opts, device)
    optimizer = optimizer_for(model, opts.lr)
    params = [p for p in model.parameters()]
    working = getattr(forward, "working", None)
    losses = torch.zeros(steps, device=device)
    clock = Clock(device, steps + 1)
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=setup.precision == "mixed")
    if setup.mode in ("cudagraphs", "autotune") and device.type != "cuda":
        raise ValueError(f"{setup.mode} needs CUDA")

    def step(i: int) -> None:
        if setup.mode in ("cudagraphs", "autotune"):
            torch.compiler.cudagraph_mark_step_begin()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(i, steps, opts.lr)
        with autocast:
            loss, lm = loss_of(setup, forward, inputs[i], targets[i])
        loss.backward()
        if working is not None:  # the job's one-pass clip, AdamW on the master, copy-back
            working.step(optimizer, 1.0)
        else:
            torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        losses[i].copy_(lm.detach())

    started = time.perf_counter()
    for i in range(opts.warmup):
        step(i)
    synchronize(device)
    warmup_s = time.perf_counter() - started
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    clock.record(opts.warmup)
    for i in range(opts.warmup, steps):
        step(i)
        clock.record(i + 1)
    synchronize(device)
    step_ms = [clock.elapsed_ms(i, i + 1) for i in range(opts.warmup, steps)]
    window_ms = clock.elapsed_ms(opts.warmup, steps)
    tokens_per_step = opts.batch[setup.kind] * opts.seq
    tokens_per_s = tokens_per_step * (steps - opts.warmup) / (window_ms / 1e3)
    fpt = flops_per_token(config, opts.seq)
    result = {
        **dataclasses.asdict(setup), "name": setup.name, "batch": opts.batch[setup.kind], "seq": opts.seq,
        "steps": steps, "warmup_steps": opts.warmup, "warmup_s": round(warmup_s, 2),
        "tokens_per_s": tokens_per_s, "step_ms_mean": window_ms / (steps - opts.warmup),
        "step_ms_median": statistics.median(step_ms), "flops_per_token": fpt,
        "mfu": tokens_per_s * fpt / (PEAK_TFLOPS * 1e12),
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan"),
        "losses": [round(v, 5) for v in losses.tolist()],
    }
    if profile_dir is not None:
        result["profile"] = profile(setup, step, steps, profile_dir)
    del model, forward, optimizer, params
    return result


class Clock:
    """Marks in the device's stream (CUDA events: no host sync), or host times on the CPU."""

    def __init__(self, device: torch.device, n: int) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list[Any] = [torch.cuda.Event(enable_timing=True) if self.cuda else 0.0 for _ in range(n)]

    def record(self, i: int) -> None:
        if self.cuda:
            self.marks[i].record()
        else:
            self.marks[i] = time.perf_counter()

    def elapsed_ms(self, i: int, j: int) -> float:
        if self.cuda:
            return self.marks[i].elapsed_time(self.marks[j])
        return (self.marks[j] - self.marks[i]) * 1e3


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def profile(setup: Setup, step: Callable[[int], None], steps: int, out: Path) -> str:
    """Kernel time table of three more steps (after the timed window), appended to ``out``/profiles.txt."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for i in range(steps - 3, steps):
            step(i)
        synchronize(torch.device("cuda"))
    path = out / "profiles.txt"  # one file for all setups
    with open(path, "a") as handle:
        handle.write(f"\n===== {setup.name} (3 steps) =====\n")
        handle.write(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=45, max_name_column_width=90))
    return path.name


def explain(kind: str, impl: str, opts: Options, device: torch.device) -> dict[str, Any]:
    """torch._dynamo.explain of the bf16 forward (with the loss): graphs and graph breaks."""
    torch._dynamo.reset()
    model, _, _ = build(Setup(kind, impl, "bf16", "eager"), opts, device)
    inputs, targets = batches(kind, opts, 1, device)
    setup = Setup(kind, impl, "bf16", "eager")
    result = torch._dynamo.explain(lambda x, y: loss_of(setup, model, x, y)[0])(inputs[0][:1], targets[0][:1])
    torch._dynamo.reset()
    return {"graphs": result.graph_count, "graph_breaks": result.graph_break_count,
            "break_reasons": sorted({str(b.reason)[:200] for b in result.break_reasons})[:10]}


def equivalence(kind: str, opts: Options, device: torch.device) -> dict[str, float]:
    """Ours and the transformers twin on the same batch, float32: same function of the same weights."""
    from hf_models import hf_loss, hf_twin

    config = dataclasses.replace(get_preset(PRESET[kind]), **opts.overrides)
    torch.manual_seed(0)
    ours = Transformer(config)
    twin = hf_twin(ours).to(device)
    ours.to(device)
    inputs, targets = batches(kind, opts, 1, device)
    x, y = inputs[0][:2], targets[0][:2]
    with torch.no_grad():
        a = ours(x, y).loss
        b = hf_loss(twin, x, y)
    return {"loss_ours": a.item(), "loss_hf": b.item(), "abs_diff": abs(a.item() - b.item())}


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda,
                            "python": platform.python_version(), "host": platform.node(), "cpus": os.cpu_count()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, sms=props.multi_processor_count, memory_gib=round(props.total_memory / 2**30, 1))
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    try:
        import pynvml

        pynvml.nvmlInit()
        info["driver"] = pynvml.nvmlSystemGetDriverVersion()
    except Exception:
        pass
    return info


def table(results: list[dict[str, Any]]) -> str:
    best_hf: dict[str, float] = {}
    for r in results:
        if r.get("impl") == "hf" and "tokens_per_s" in r:
            best_hf[r["kind"]] = max(best_hf.get(r["kind"], 0.0), r["tokens_per_s"])
    lines = [f"{'setup':<30} {'tok/s':>9} {'ms/step':>8} {'MFU':>6} {'peak GiB':>8} {'loss 0':>7} "
             f"{'loss end':>8} {'vs best HF':>10}"]
    for r in results:
        if "tokens_per_s" not in r:
            lines.append(f"{r['name']:<30} failed: {r.get('error', '')[:60]}")
            continue
        ratio = r["tokens_per_s"] / best_hf[r["kind"]] if r["kind"] in best_hf else float("nan")
        end = statistics.mean(r["losses"][-10:])
        lines.append(f"{r['name']:<30} {r['tokens_per_s'] / 1e3:>8.1f}k {r['step_ms_mean']:>8.2f} "
                     f"{r['mfu']:>6.1%} {r['peak_memory_gib']:>8.2f} {r['losses'][0]:>7.3f} {end:>8.3f} "
                     f"{ratio:>9.2f}x")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kinds", default="dense,moe")
    parser.add_argument("--impls", default="ours,hf")
    parser.add_argument("--precisions", default="mixed,bf16")
    parser.add_argument("--modes", default="eager,compile")
    parser.add_argument("--only", default="", help="comma-separated setup names (kind/impl/precision/mode)")
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=200, help="steps of a compiled setup (the loss curve)")
    parser.add_argument("--eager-steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--lr", type=float, default=6e-4)
    parser.add_argument("--batch-dense", type=int, default=BATCH["dense"])
    parser.add_argument("--batch-moe", type=int, default=BATCH["moe"])
    parser.add_argument("--override", action="append", default=[], help="model option KEY=VALUE (JSON value)")
    parser.add_argument("--explain", action="store_true", help="graph and graph-break counts (torch._dynamo.explain)")
    parser.add_argument("--profile", action="store_true", help="a kernel table of 3 steps per setup")
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of the script itself (tiny sizes)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu_throughput.json"))
    args = parser.parse_args()

    overrides = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.override)}
    opts = Options(seq=args.seq, steps=args.steps, eager_steps=args.eager_steps, warmup=args.warmup, lr=args.lr,
                   overrides=overrides, batch={"dense": args.batch_dense, "moe": args.batch_moe})
    device = torch.device(args.device)
    setups = [Setup(k, i, p, m) for k in args.kinds.split(",") for i in args.impls.split(",")
              for p in args.precisions.split(",") for m in args.modes.split(",")]
    if args.only:
        setups = [Setup(*name.split("/")) for name in args.only.split(",")]
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {"benchmark": "gpu_throughput", "date": datetime.date.today().isoformat(),
                           "command": "python " + " ".join(sys.argv), "machine": machine(),
                           "peak_tflops": PEAK_TFLOPS, "options": dataclasses.asdict(opts),
                           "equivalence": {}, "explain": {}, "results": []}
    print(json.dumps(doc["machine"]), flush=True)

    def save() -> None:
        out_path.write_text(json.dumps(doc, indent=1))

    for kind in sorted({s.kind for s in setups}):
        if any(s.impl == "hf" and s.kind == kind for s in setups):
            try:
                doc["equivalence"][kind] = equivalence(kind, opts, device)
            except Exception as error:
                doc["equivalence"][kind] = {"error": f"{type(error).__name__}: {error}"}
            print(f"equivalence {kind}: {doc['equivalence'][kind]}", flush=True)
    if args.explain:
        for kind in sorted({s.kind for s in setups}):
            for impl in sorted({s.impl for s in setups}):
                try:
                    doc["explain"][f"{kind}/{impl}"] = explain(kind, impl, opts, device)
                except Exception as error:
                    doc["explain"][f"{kind}/{impl}"] = {"error": f"{type(error).__name__}: {error}"[:500]}
                print(f"explain {kind}/{impl}: {doc['explain'][f'{kind}/{impl}']}", flush=True)
        save()
    for setup in setups:
        torch._dynamo.reset()
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        started = time.perf_counter()
        try:
            result = run_setup(setup, opts, device, out_path.parent if args.profile else None)
        except Exception as error:
            traceback.print_exc()
            result = {**dataclasses.asdict(setup), "name": setup.name, "error": f"{type(error).__name__}: {error}"[:2000]}
        result["wall_s"] = round(time.perf_counter() - started, 1)
        doc["results"].append(result)
        save()
        if "tokens_per_s" in result:
            print(f"{setup.name}: {result['tokens_per_s']:,.0f} tok/s, MFU {result['mfu']:.1%}, "
                  f"{result['peak_memory_gib']:.1f} GiB, warm-up {result['warmup_s']} s, wall {result['wall_s']} s",
                  flush=True)
    print(table(doc["results"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
