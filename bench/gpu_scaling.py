"""Scaling over the GPUs of one host through Ray Train, the way users run jobs.

A local rayfleet fleet with one node that holds all N GPUs (pool gpus_per_node N, nodes 1: two
local raylets on one host would both claim GPU 0), brought up with the project's CLI; then
jobs written as job YAML files and submitted one after another with `rayfleet submit --follow`,
so they run through the project's entrypoint (jobs/driver/entrypoint.py: TorchTrainer, NCCL) and
training loop (jobs/worker/loop.py). Jobs:
    dense-1          dense_124m on 1 GPU (one worker trains the plain model, whatever the strategy)
    ddp-N, fsdp-N    dense_124m, DDP and FSDP2 on N GPUs
    moe-1, moe-N     moe_8x; on N GPUs expert parallelism N (experts sharded, DDP for the rest)
DDP and FSDP scale weakly: the same batch per GPU (global batch = per-GPU batch x GPUs); scaling
efficiency = tok/s on N GPUs / (N x tok/s on 1). The MoE pair trains the same global batch, so
its loss curves must agree (same data, same initial weights; only the reduction order and
bf16 rounding differ), and its throughput is compared with 1 GPU as it is.
Throughput comes from each job's metrics curve (<storage>/jobs/<name>/runs/<id>/metrics.jsonl,
written by rank 0 every step): the median tok/s over the steps after the warm-up.

    python bench/gpu_scaling.py --gpus 2 --out bench/results/gpu_scaling.json
    python bench/gpu_scaling.py --gpus 2 --cpu-dry-run       # the same flow on simulated GPUs (tiny models)
Write it for N: `--gpus 4` on a 4-GPU host runs the same jobs with 4 workers; `--gpus 1` runs
each 1-GPU job once (a smoke run of the whole path on a one-GPU machine).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-P", "-m", "rayfleet.cli.main"]  # -P: the checkout (cwd) must not shadow the installed package


def fleet_spec(gpus: int, cpus_per_worker: int) -> dict[str, Any]:
    return {"name": "gpu-scaling", "provider": "local",
            "head": {"cpus": 1, "dashboard_host": "127.0.0.1"},
            "pools": [{"name": "gpus", "accelerator": "H200", "gpus_per_node": gpus,
                       "cpus_per_node": cpus_per_worker * gpus, "memory": "64Gi",
                       "min_nodes": 1, "max_nodes": 1, "nodes": 1}],
            "health": {"check_interval_s": 5}, "scaling": {"loop_period_s": 1}}


def job_spec(name: str, workers: int, strategy: str, preset: str, global_batch: int, args: argparse.Namespace,
             expert_parallel: int = 1) -> dict[str, Any]:
    return {"name": name, "pool": "gpus", "workers": workers, "resources": {"cpus": args.cpus_per_worker},
            "parallelism": {"strategy": strategy, "expert_parallel": expert_parallel},
            "model": {"preset": preset}, "data": {"seq_len": args.seq, "global_batch": global_batch},
            "optimizer": {"lr": 1e-3, "warmup_steps": 10}, "steps": args.steps, "log_every": 1,
            "checkpoint": {"every": args.steps, "keep": 1}, "failure": {"max_restarts": 0},
            "precision": args.precision, "compile": False, "seed": 0}


def cli(*args: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    # not in the checkout: Ray puts a driver's working folder first on its workers' path, where the
    # checkout's rayfleet/ folder (not the whole package) would shadow the installed wheel
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=tempfile.gettempdir())


def curve(home: Path, name: str) -> list[dict[str, Any]]:
    paths = sorted(home.glob(f"fleets/*/storage/jobs/{name}/runs/*/metrics.jsonl"))
    if not paths:
        return []
    return [json.loads(line) for line in paths[-1].read_text().splitlines() if line.strip()]


def summary(points: list[dict[str, Any]], warmup: int) -> dict[str, Any]:
    timed = [p for p in points if p["step"] > warmup]
    rates = [p["tokens_per_s"] for p in timed]
    mfus = [p["mfu"] for p in timed if p.get("mfu") is not None]
    return {"steps": len(points), "tokens_per_s": statistics.median(rates) if rates else None,
            "mfu": statistics.median(mfus) if mfus else None,
            "losses": [round(p["loss"], 5) for p in points]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10, help="steps left out of the throughput")
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--batch-per-gpu", type=int, default=16, help="dense jobs (DDP, FSDP)")
    parser.add_argument("--moe-batch", type=int, default=16, help="the MoE jobs' global batch")
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--cpus-per-worker", type=int, default=4)
    parser.add_argument("--jobs", default="ddp,fsdp,moe")
    parser.add_argument("--job-timeout", type=float, default=300)
    parser.add_argument("--cpu-dry-run", action="store_true", help="tiny models on simulated GPUs (no GPU needed)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu_scaling.json"))
    args = parser.parse_args()
    dense, moe = ("tiny", "tiny_moe") if args.cpu_dry_run else ("dense_124m", "moe_8x")
    if args.cpu_dry_run:
        args.seq, args.batch_per_gpu, args.moe_batch, args.cpus_per_worker = 64, 4, 4, 1
    n = args.gpus
    # One worker trains the plain model whatever the strategy (jobs/worker/parallelize.py), so one 1-GPU
    # dense job is the baseline of both DDP and FSDP.
    kinds = args.jobs.split(",")
    plan = [("dense-1", 1, "ddp", dense, args.batch_per_gpu, 1)] if {"ddp", "fsdp"} & set(kinds) else []
    plan += [(f"{kind}-{n}", n, kind, dense, args.batch_per_gpu * n, 1) for kind in ("ddp", "fsdp") if kind in kinds]
    if "moe" in kinds:
        plan += [("moe-1", 1, "moe", moe, args.moe_batch, 1), (f"moe-{n}", n, "moe", moe, args.moe_batch, n)]
    plan = list({job[0]: job for job in plan}.values())  # --gpus 1 (a smoke run): each job once

    home = Path(tempfile.mkdtemp(prefix="rayfleet-scaling-"))
    env = {**os.environ, "RAYFLEET_HOME": str(home),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           # NVLink multicast stays off (the GPU hosts' rule; NCCL would otherwise try NVLS)
           "NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
    fleet_file = home / "fleet.yaml"
    fleet_file.write_text(yaml.safe_dump(fleet_spec(n, args.cpus_per_worker), sort_keys=False))
    doc: dict[str, Any] = {"benchmark": "gpu_scaling", "date": datetime.date.today().isoformat(),
                           "command": "python " + " ".join(sys.argv), "gpus": n, "fleet": fleet_spec(n, args.cpus_per_worker),
                           "jobs": {}}
    try:
        import torch

        doc["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (simulated)"
        doc["torch"] = torch.__version__
    except ImportError:
        pass
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result = cli("up", "-f", str(fleet_file), env=env, timeout=300)
    doc["fleet_up_s"] = round(time.perf_counter() - started, 1)
    print(f"fleet up: rc {result.returncode} in {doc['fleet_up_s']} s", flush=True)
    if result.returncode != 0:
        print(result.stdout[-2000:], result.stderr[-2000:], flush=True)
        doc["error"] = (result.stdout + result.stderr)[-3000:]
        out_path.write_text(json.dumps(doc, indent=1))
        return 1
    try:
        for name, workers, strategy, preset, batch, ep in plan:
            spec = job_spec(name, workers, strategy, preset, batch, args, ep)
            path = home / f"{name}.yaml"
            path.write_text(yaml.safe_dump(spec, sort_keys=False))
            began = time.perf_counter()
            try:
                result = cli("submit", "-f", str(path), "--follow", env=env, timeout=args.job_timeout)
                rc, tail = result.returncode, (result.stdout + result.stderr)[-1500:]
            except subprocess.TimeoutExpired:
                rc, tail = -1, "timed out"
                cli("stop", name, env=env, timeout=60)
            entry = {"spec": spec, "rc": rc, "wall_s": round(time.perf_counter() - began, 1),
                     **summary(curve(home, name), args.warmup)}
            if rc != 0:
                entry["output"] = tail
            doc["jobs"][name] = entry
            out_path.write_text(json.dumps(doc, indent=1))
            print(f"{name}: rc {rc}, {entry['wall_s']} s, tok/s {entry['tokens_per_s']}", flush=True)
            if rc != 0:
                print(tail, flush=True)
    finally:
        down = cli("down", env=env, timeout=300)
        print(f"fleet down: rc {down.returncode}", flush=True)
    jobs = doc["jobs"]
    if n == 1:
        print("one GPU: a smoke run of the path, no scaling figures")
        return 0 if all(job["rc"] == 0 for job in jobs.values()) else 1
    rows = []
    for kind in ("ddp", "fsdp", "moe"):
        one, many = jobs.get("moe-1" if kind == "moe" else "dense-1", {}), jobs.get(f"{kind}-{n}", {})
        if one.get("tokens_per_s") and many.get("tokens_per_s"):
            speedup = many["tokens_per_s"] / one["tokens_per_s"]
            row = {"strategy": kind, "tok_s_1": one["tokens_per_s"], f"tok_s_{n}": many["tokens_per_s"],
                   "speedup": speedup, "efficiency": speedup / n}
            if kind == "moe":
                diffs = [abs(a - b) for a, b in zip(one["losses"], many["losses"])]
                row["max_abs_loss_diff"] = max(diffs) if diffs else None
                row["max_abs_loss_diff_first10"] = max(diffs[:10]) if diffs else None
            rows.append(row)
    doc["summary"] = rows
    out_path.write_text(json.dumps(doc, indent=1))
    print(f"{'strategy':<8} {'tok/s 1 GPU':>12} {f'tok/s {n} GPUs':>13} {'speedup':>8} {'efficiency':>10}  loss")
    for r in rows:
        loss = (f"max |dloss| {r['max_abs_loss_diff']:.4f} (first 10 steps {r['max_abs_loss_diff_first10']:.4f})"
                if r["strategy"] == "moe" else "")
        print(f"{r['strategy']:<8} {r['tok_s_1']:>12,.0f} {r[f'tok_s_{n}']:>13,.0f} {r['speedup']:>7.2f}x "
              f"{r['efficiency']:>9.1%}  {loss}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
