"""Per-step overhead of the job's training loop against the bare model step, on one device.

The same model, batches, precision policy and compile setting run twice from the same initial
weights, each in a fresh `Trainer` (jobs/worker/loop.py) of one worker:
    bare  `Trainer.train_step` in a plain Python loop: forward, backward, clipping, AdamW
    loop  `Trainer.train`, everything a job does per step: step counters for hang detection,
          step beats, buffered goodput events, the notice check, the logged loss (every step, as
          the default log_every), progress publishing (metrics file, log line)
Ray is not started: beats and notices try the GCS and fail quietly, as cheap as they are with it.
The time of a step is taken between the ends of consecutive `train_step` calls (CUDA events on
the GPU, no host sync inside the window; host clock on the CPU), after `--warmup` steps (compile).
Also measured: the host time spent outside `train_step` per step (what the loop adds on the host).

    python bench/job_overhead.py --device cuda --preset dense_124m --batch 16 --seq 1024
    python bench/job_overhead.py --device cpu --preset tiny --batch 4 --seq 64 --steps 20 --warmup 3

prints a table and writes JSON to bench/results/job_overhead_<device>_<preset>.json (or --out).
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
# rayfleet as installed (editable here; a wheel under PYTHONPATH on the GPU machine) comes before the
# checkout's root, whose rayfleet/ folder alone is not the whole package
sys.path.append(str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from rayfleet.jobs.client.spec import JobSpec  # noqa: E402
from rayfleet.jobs.contract import RunInfo  # noqa: E402
from rayfleet.jobs.worker.loop import Trainer  # noqa: E402

from gpu_throughput import Clock, machine, synchronize  # noqa: E402  (after rayfleet: it puts the root first)


def job_spec(args: argparse.Namespace) -> JobSpec:
    return JobSpec.model_validate({
        "name": "bench-overhead", "pool": "bench", "workers": 1, "steps": args.warmup + args.steps,
        "model": {"preset": args.preset, "overrides": {"max_seq_len": max(args.seq, 1024)}},
        "data": {"seq_len": args.seq, "global_batch": args.batch}, "precision": args.precision,
        "compile": {"true": True, "false": False}.get(args.compile, args.compile),
        "checkpoint": {"every": 10**9}, "optimizer": {"warmup_steps": 20, "lr": 6e-4}, "log_every": 1})


class Timed:
    """Wraps a trainer's train_step: a device mark at the end of each step, host time between steps."""

    def __init__(self, trainer: Trainer, device: torch.device, steps: int) -> None:
        self.trainer, self.clock = trainer, Clock(device, steps + 1)
        self.inner = trainer.train_step
        self.count = 0
        self.left_at: float | None = None
        self.outside_s: list[float] = []
        self.losses: list[torch.Tensor] = []
        trainer.train_step = self.step  # type: ignore[method-assign]

    def step(self) -> torch.Tensor:
        entered = time.perf_counter()
        if self.left_at is not None:
            self.outside_s.append(entered - self.left_at)
        loss = self.inner()
        self.count += 1
        self.clock.record(self.count)
        self.losses.append(loss.detach().clone())  # a CUDA graph overwrites its outputs at the next replay
        self.left_at = time.perf_counter()
        return loss


def measure(kind: str, spec: JobSpec, device: torch.device, warmup: int, folder: Path) -> dict[str, Any]:
    run = RunInfo(storage=str(folder / kind), device=device.type, gpus_per_worker=1 if device.type == "cuda" else 0,
                  submission_id=kind)
    trainer = Trainer(spec, run, 0, 1, device, folder / kind / "jobs" / spec.name)
    timed = Timed(trainer, device, spec.steps)
    started = time.perf_counter()
    if kind == "loop":
        trainer.watch("bench-node")
        trainer.train()
    else:
        while trainer.step < spec.steps:
            trainer.train_step()
            trainer.step += 1
    synchronize(device)
    wall_s = time.perf_counter() - started
    if trainer.marks is not None:
        trainer.marks.close()
    window_ms = timed.clock.elapsed_ms(warmup, spec.steps)
    step_ms = [timed.clock.elapsed_ms(i, i + 1) for i in range(warmup, spec.steps)]
    outside = timed.outside_s[warmup:]
    tokens = spec.data.global_batch * spec.data.seq_len
    return {"kind": kind, "steps": spec.steps, "warmup": warmup, "wall_s": round(wall_s, 2),
            "step_ms_mean": window_ms / (spec.steps - warmup), "step_ms_median": statistics.median(step_ms),
            "tokens_per_s": tokens * (spec.steps - warmup) / (window_ms / 1e3),
            "host_us_between_steps_median": statistics.median(outside) * 1e6 if outside else 0.0,
            "losses": [round(float(v), 5) for v in timed.losses]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", default=None, help="default: dense_124m on cuda, tiny on cpu")
    parser.add_argument("--batch", type=int, default=None, help="default: 16 on cuda, 4 on cpu")
    parser.add_argument("--seq", type=int, default=None, help="default: 1024 on cuda, 64 on cpu")
    parser.add_argument("--steps", type=int, default=None, help="timed steps; default 100 on cuda, 20 on cpu")
    parser.add_argument("--warmup", type=int, default=None, help="untimed first steps; default 15 on cuda, 3 on cpu")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--compile", default="auto")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and device.index is None:  # CUDA events, set_device and the Trainer want an index
        device = torch.device("cuda", 0)
    for name, on_cuda, on_cpu in (("preset", "dense_124m", "tiny"), ("batch", 16, 4), ("seq", 1024, 64),
                                  ("steps", 100, 20), ("warmup", 15, 3)):
        if getattr(args, name) is None:
            setattr(args, name, on_cuda if cuda else on_cpu)
    if cuda:
        torch.cuda.set_device(device)
    spec = job_spec(args)
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for kind in ("bare", "loop"):
            torch._dynamo.reset()
            results.append(measure(kind, spec, device, args.warmup, Path(folder)))
            print(f"{kind}: {results[-1]['step_ms_mean']:.2f} ms/step", flush=True)
    bare, loop = results
    overhead = {"step_ms": loop["step_ms_mean"] - bare["step_ms_mean"],
                "ratio": loop["step_ms_mean"] / bare["step_ms_mean"],
                "loss_max_abs_diff": max(abs(a - b) for a, b in zip(bare["losses"], loop["losses"]))}
    doc = {"benchmark": "job_overhead", "date": datetime.date.today().isoformat(),
           "command": "python " + " ".join(sys.argv), "machine": machine(),
           "setup": {"preset": args.preset, "batch": args.batch, "seq": args.seq, "precision": spec.precision,
                     "compile": spec.compile, "device": args.device},
           "results": results, "overhead": overhead}
    print(f"{'run':<6} {'ms/step':>9} {'median':>9} {'tok/s':>10} {'host us between steps':>22}")
    for r in results:
        print(f"{r['kind']:<6} {r['step_ms_mean']:>9.2f} {r['step_ms_median']:>9.2f} {r['tokens_per_s']:>10,.0f} "
              f"{r['host_us_between_steps_median']:>22.0f}")
    print(f"loop / bare: {overhead['ratio']:.3f} ({overhead['step_ms']:+.2f} ms/step); "
          f"losses differ by at most {overhead['loss_max_abs_diff']:.2e}")
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / f"job_overhead_{device.type}_{args.preset}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
