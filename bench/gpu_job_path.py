"""The speed a user gets through `rayfleet submit` against the bare benchmark, in one run.

The same models (dense_124m batch 16, moe_8x batch 8, sequence 1024), initial weights, batches,
optimizer and learning-rate schedule go through two paths on one GPU:
    bench  bench/gpu_throughput.py's `run_setup` (no Ray, batches staged on the GPU, CUDA events),
           one row per `--bench-setups` entry (impl/precision/mode, e.g. ours/bf16/cudagraphs)
    job    a local one-GPU fleet (`rayfleet up`) and one job per model (`rayfleet submit --follow`),
           with the job defaults (`--precision auto --compile auto`: bf16-mixed with fp32 master
           weights, compiled), through Ray Train, the project's entrypoint and training loop
Reported per model: tokens/s of the job (median of its metrics after `--warmup` steps) over
the fastest bench row; the loss curves (the job against the bench row of the same precision,
against the bench's own run-to-run spread: that row run twice); and the job's time from submit
to first step by part, from `rayfleet job -o json`'s goodput (waiting, startup, compile).

    python bench/gpu_job_path.py --device cuda --out bench/results/gpu_job_path_h200.json
    python bench/gpu_job_path.py --device cpu --steps 5   # the whole flow on the CPU, tiny models

A device command may run 10 minutes: split a long run with `--parts bench` / `--parts job` and
`--models dense` / `--models moe` (each writes its own JSON), then
    python bench/gpu_job_path.py --merge a.json b.json ... --out bench/results/gpu_job_path_h200.json
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
# rayfleet as installed (editable here; a wheel under PYTHONPATH on the GPU machine) comes before the
# checkout's root, whose rayfleet/ folder alone is not the whole package
sys.path.append(str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import rayfleet.jobs.worker.data  # noqa: E402,F401  (before gpu_throughput, which puts the root first)
import gpu_scaling  # noqa: E402  (the fleet, the CLI and the job's metrics curve)
import gpu_throughput  # noqa: E402  (the bare bench)

KINDS = {"dense": ("dense_124m", 16), "moe": ("moe_8x", 8)}
CPU_OVERRIDES = {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "mlp_hidden": 128, "expert_hidden": 64}
"""--device cpu: the presets shrunk so the flow runs in seconds (vocabulary and shapes otherwise kept)."""
LR, WARMUP_STEPS = 6e-4, 20  # gpu_throughput's lr and lr_at warm-up, given to the job's optimizer too
BENCH_PRECISION = {"bf16-mixed": "master", "bf16": "bf16"}  # a one-worker job's bf16-mixed is the working copy


def options(args: argparse.Namespace, overrides: dict[str, Any]) -> Any:
    return gpu_throughput.Options(seq=args.seq, steps=args.steps, eager_steps=args.steps, warmup=args.warmup,
                                  lr=LR, overrides=overrides, batch={k: b for k, (_, b) in KINDS.items()})


def bench_rows(kind: str, args: argparse.Namespace, device: Any, overrides: dict[str, Any]) -> list[dict[str, Any]]:
    """The bench setups of one model, and the spread row (the job's precision, run again)."""
    import torch

    setups = [gpu_throughput.Setup(kind, *s.split("/")) for s in args.bench_setups.split(",")]
    spread = next((s for s in setups if s.precision == BENCH_PRECISION.get(args.job_precision, "")), None)
    plan = [(s, False) for s in setups] + ([(spread, True)] if spread is not None and args.spread else [])
    rows = []
    for setup, again in plan:
        torch._dynamo.reset()
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        began = time.perf_counter()
        try:
            row = gpu_throughput.run_setup(setup, options(args, overrides), device)
        except Exception as error:
            traceback.print_exc()
            row = {"name": setup.name, "kind": kind, "error": f"{type(error).__name__}: {error}"[:2000]}
        row.update(repeat=again, wall_s=round(time.perf_counter() - began, 1))
        rows.append(row)
        print(f"bench {setup.name}{' (again)' if again else ''}: {row.get('tokens_per_s', 0):,.0f} tok/s", flush=True)
    return rows


def job_yaml(kind: str, args: argparse.Namespace, overrides: dict[str, Any]) -> dict[str, Any]:
    preset, batch = KINDS[kind]
    return {"name": f"path-{kind}", "pool": "gpus", "workers": 1, "resources": {"cpus": args.cpus_per_worker},
            "parallelism": {"strategy": "moe" if kind == "moe" else "ddp"},
            "model": {"preset": preset, "overrides": {"max_seq_len": max(args.seq, 1024), **overrides}},
            "data": {"seq_len": args.seq, "global_batch": batch},
            "optimizer": {"lr": LR, "warmup_steps": WARMUP_STEPS, "schedule": "cosine", "min_lr_ratio": 0.1},
            "steps": args.steps, "log_every": 1, "checkpoint": {"every": args.steps, "keep": 1},
            "failure": {"max_restarts": 0}, "precision": args.job_precision,
            "compile": {"true": True, "false": False}.get(args.job_compile, args.job_compile), "seed": 0}


def job_runs(kinds: list[str], args: argparse.Namespace, overrides: dict[str, Any]) -> dict[str, Any]:
    """Bring a one-GPU fleet up, run one job per model through it, bring it down."""
    home = Path(tempfile.mkdtemp(prefix="rayfleet-job-path-"))
    env = {**os.environ, "RAYFLEET_HOME": str(home),
           "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(ROOT)])),
           # the checkout beside an installed wheel (the GPU machine): no process may put its cwd, the
           # checkout whose rayfleet/ folder is not the whole package, first on its path
           "PYTHONSAFEPATH": "1",
           "NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
    fleet = gpu_scaling.fleet_spec(1, args.cpus_per_worker)  # on a CPU machine the GPU is simulated: the job runs on cpu
    fleet["name"] = "job-path"
    fleet_file = home / "fleet.yaml"
    fleet_file.write_text(yaml.safe_dump(fleet, sort_keys=False))
    out: dict[str, Any] = {"fleet": fleet}
    began = time.perf_counter()
    up = gpu_scaling.cli("up", "-f", str(fleet_file), env=env, timeout=300)
    out["fleet_up_s"] = round(time.perf_counter() - began, 1)
    print(f"fleet up: rc {up.returncode} in {out['fleet_up_s']} s", flush=True)
    if up.returncode != 0:
        out["error"] = (up.stdout + up.stderr)[-3000:]
        for log in sorted(home.glob("fleets/*/logs/*.log")):
            out["error"] += f"\n--- {log.name}\n" + log.read_text(errors="replace")[-2000:]
        return out
    try:
        for kind in kinds:
            spec = job_yaml(kind, args, overrides)
            path = home / f"{spec['name']}.yaml"
            path.write_text(yaml.safe_dump(spec, sort_keys=False))
            began = time.perf_counter()
            rc, tail = submit(path, spec["name"], env, args.job_timeout)
            shown = gpu_scaling.cli("job", spec["name"], "-o", "json", env=env, timeout=60)
            try:
                goodput = json.loads(shown.stdout).get("goodput") or {}
            except json.JSONDecodeError:
                goodput = {"error": (shown.stdout + shown.stderr)[-500:]}
            entry = {"spec": spec, "rc": rc, "wall_s": round(time.perf_counter() - began, 1), "goodput": goodput,
                     "waiting_parts": waiting_parts(home, spec["name"]),
                     **gpu_scaling.summary(gpu_scaling.curve(home, spec["name"]), args.warmup)}
            if rc != 0:
                entry["output"] = tail
            out[kind] = entry
            print(f"job {kind}: rc {rc}, {entry['wall_s']} s, tok/s {entry['tokens_per_s']}", flush=True)
    finally:
        down = gpu_scaling.cli("down", env=env, timeout=300)
        print(f"fleet down: rc {down.returncode}", flush=True)
    return out


WAITING_MARKS = (("driver", "submit -> driver runs"), ("fit", "driver -> Ray Train starts"),
                 ("process", "Ray Train -> worker process"), ("worker", "worker process -> training function"),
                 ("started", "training function -> model built"), ("step", "model built -> first step ends"))


def waiting_parts(home: Path, name: str) -> dict[str, float]:
    """The time from submit to the first step's end, cut at the job history's marks of its
    last submission (the driver, Ray Train's start, the worker's process, its training function,
    the model built and resumed, the first step's end)."""
    files = sorted(home.glob(f"fleets/*/storage/jobs/{name}/history.jsonl"))
    if not files:
        return {}
    events = [json.loads(line) for line in files[-1].read_text().splitlines() if line.strip()]
    submitted = [e for e in events if e["event"] == "submitted"]
    if not submitted:
        return {}
    run = [e for e in events if e["time"] >= submitted[-1]["time"]]
    times = {"submitted": submitted[-1]["time"]}
    for event in run:
        kind = event["event"]
        if kind == "worker" and event.get("process_started"):
            times.setdefault("process", float(event["process_started"]))
        times.setdefault(kind, float(event["time"]))
    parts, previous = {}, times["submitted"]
    for mark, label in WAITING_MARKS:
        if mark in times:
            parts[label] = round(times[mark] - previous, 3)
            previous = times[mark]
    return parts


def submit(path: Path, name: str, env: dict[str, str], timeout: float) -> tuple[int, str]:
    """`rayfleet submit --follow`; again while the head's job agent is not up yet (Ray answers
    "No available agent" for a few seconds after a head starts on a loaded machine)."""
    deadline = time.monotonic() + 120
    while True:
        try:
            result = gpu_scaling.cli("submit", "-f", str(path), "--follow", env=env, timeout=timeout)
        except Exception as error:  # subprocess.TimeoutExpired
            gpu_scaling.cli("stop", name, env=env, timeout=60)
            return -1, f"{type(error).__name__}: {error}"
        tail = (result.stdout + result.stderr)[-1500:]
        if result.returncode == 0 or "No available agent" not in tail or time.monotonic() > deadline:
            return result.returncode, tail
        print("the head's job agent is not up yet; submitting again", flush=True)
        time.sleep(2)  # a retry interval, not a synchronisation: the loop's condition is the answer


def compare(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Per model: the job over the fastest bench row, loss differences, submit to first step by part."""
    rows = []
    for kind in KINDS:
        bench = [r for r in doc.get("bench", {}).get(kind, []) if "tokens_per_s" in r]
        job = doc.get("job", {}).get(kind)
        if not bench and not job:
            continue
        fastest = max((r for r in bench if not r.get("repeat")), key=lambda r: r["tokens_per_s"], default=None)
        same = [r for r in bench if r.get("precision") == BENCH_PRECISION.get(doc.get("job_precision", ""), "")]
        row: dict[str, Any] = {"kind": kind, "bench_fastest": fastest["name"] if fastest else None,
                               "bench_fastest_tok_s": fastest["tokens_per_s"] if fastest else None,
                               "job_tok_s": job.get("tokens_per_s") if job else None}
        if row["bench_fastest_tok_s"] and row["job_tok_s"]:
            row["ratio"] = row["job_tok_s"] / row["bench_fastest_tok_s"]
        if job and job.get("losses") and same:
            first = next(r for r in same if not r.get("repeat"))
            row["loss_vs"] = first["name"]
            row["loss_max_abs_diff"] = max(abs(a - b) for a, b in zip(job["losses"], first["losses"]))
            again = [r for r in same if r.get("repeat")]
            if again:
                row["bench_spread_max_abs_diff"] = max(abs(a - b) for a, b in zip(again[0]["losses"], first["losses"]))
        if job:
            parts = (job.get("goodput") or {}).get("parts", {})
            row["submit_to_first_step"] = {k: parts.get(k) for k in ("waiting", "startup", "compile")}
            row["job_rc"] = job.get("rc")
            row["waiting_parts"] = job.get("waiting_parts", {})
        rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    def num(value: Any, form: str) -> str:
        return "-" if value is None else format(value, form)

    lines = [f"{'model':<6} {'bench fastest':<26} {'tok/s':>9} {'job tok/s':>10} {'ratio':>6} {'|dloss| job':>11} "
             f"{'bench spread':>12} {'waiting':>8} {'startup':>8} {'compile':>8}"]
    for r in rows:
        first = r.get("submit_to_first_step", {})
        lines.append(f"{r['kind']:<6} {r['bench_fastest'] or '-':<26} {num(r['bench_fastest_tok_s'], ',.0f'):>9} "
                     f"{num(r['job_tok_s'], ',.0f'):>10} {num(r.get('ratio'), '.3f'):>6} "
                     f"{num(r.get('loss_max_abs_diff'), '.4f'):>11} {num(r.get('bench_spread_max_abs_diff'), '.4f'):>12} "
                     f"{num(first.get('waiting'), '.1f'):>8} {num(first.get('startup'), '.1f'):>8} "
                     f"{num(first.get('compile'), '.1f'):>8}")
    for r in rows:
        if r.get("waiting_parts"):
            lines.append(f"{r['kind']}: submit to first step: "
                         + ", ".join(f"{k} {v:.1f} s" for k, v in r["waiting_parts"].items()))
    return "\n".join(lines)


def merge(paths: list[str]) -> dict[str, Any]:
    doc: dict[str, Any] = {"bench": {}, "job": {}, "merged_from": paths}
    for path in paths:
        part = json.loads(Path(path).read_text())
        for key in ("benchmark", "date", "machine", "options", "job_precision", "job_compile"):
            doc.setdefault(key, part.get(key))
        for kind, rows in part.get("bench", {}).items():
            doc["bench"].setdefault(kind, []).extend(rows)
        doc["job"].update(part.get("job", {}))
    return doc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--models", default="dense,moe")
    parser.add_argument("--parts", default="bench,job")
    parser.add_argument("--steps", type=int, default=None, help="default 500 on cuda (loss curves), 5 on cpu")
    parser.add_argument("--warmup", type=int, default=None, help="steps left out of tok/s; default 20 on cuda, 1 on cpu")
    parser.add_argument("--seq", type=int, default=None, help="default 1024 on cuda, 64 on cpu")
    parser.add_argument("--bench-setups", default=None,
                        help="impl/precision/mode list; default on cuda ours/bf16/cudagraphs,ours/master/cudagraphs,"
                             "ours/mixed/cudagraphs (add hf/bf16/compile for transformers' row), on cpu ours/mixed/eager")
    parser.add_argument("--no-spread", dest="spread", action="store_false",
                        help="skip running the job's precision row twice (the bench's run-to-run spread)")
    parser.add_argument("--job-precision", default="bf16-mixed", help="the job's precision (auto = bf16-mixed on cuda)")
    parser.add_argument("--job-compile", default="auto")
    parser.add_argument("--cpus-per-worker", type=int, default=None, help="default 4 on cuda, 1 on cpu")
    parser.add_argument("--job-timeout", type=float, default=900)
    parser.add_argument("--merge", nargs="*", help="combine the JSON files of earlier runs (no runs)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    cuda = args.device == "cuda"
    for name, on_cuda, on_cpu in (("steps", 500, 5), ("warmup", 20, 1), ("seq", 1024, 64),
                                  ("bench_setups", "ours/bf16/cudagraphs,ours/master/cudagraphs,ours/mixed/cudagraphs",
                                   "ours/mixed/eager"), ("cpus_per_worker", 4, 1)):
        if getattr(args, name) is None:
            setattr(args, name, on_cuda if cuda else on_cpu)
    out_path = Path(args.out or ROOT / "bench" / "results" / f"gpu_job_path_{args.device}.json")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if args.merge:
        doc = merge(args.merge)
    else:
        import torch

        device = torch.device(args.device)
        overrides = {} if cuda else dict(CPU_OVERRIDES)
        kinds = args.models.split(",")
        doc = {"benchmark": "gpu_job_path", "date": datetime.date.today().isoformat(),
               "command": "python " + " ".join(sys.argv), "machine": gpu_throughput.machine(),
               "options": {k: v for k, v in vars(args).items() if k != "merge"}, "overrides": overrides,
               "job_precision": args.job_precision, "job_compile": args.job_compile, "bench": {}, "job": {}}
        if "bench" in args.parts:
            for kind in kinds:
                doc["bench"][kind] = bench_rows(kind, args, device, overrides)
                out_path.write_text(json.dumps(doc, indent=1))
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()  # the job's worker is another process on the same GPU
        if "job" in args.parts:
            doc["job"] = job_runs(kinds, args, overrides)
    doc["summary"] = compare(doc)
    out_path.write_text(json.dumps(doc, indent=1))
    print(table(doc["summary"]))
    print(f"wrote {out_path}")
    failed = [k for k, v in doc.get("job", {}).items() if isinstance(v, dict) and v.get("rc") not in (None, 0)]
    return 1 if failed or "error" in doc.get("job", {}) else 0


if __name__ == "__main__":
    sys.exit(main())
