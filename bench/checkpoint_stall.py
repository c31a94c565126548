"""Checkpoint stall: how long training stands still per checkpoint, synchronous against
asynchronous (`checkpoint.mode`), and how long a restore on another world size takes.

Two gloo ranks on CPU (torch.multiprocessing, no Ray) train `--preset` (moe_8x: 251M parameters,
expert-parallel over both ranks) through the job's own Trainer and save `--saves` checkpoints
`--between` steps apart in each mode. A synchronous save's stall is the whole save; an
asynchronous one's is the save call (state copied to host memory, the writer started) plus any
wait for it at the next save; the first save comes `--between` steps into training, as the
others come `--between` steps after the one before (the host copy is prepared after the first
step, beside training: jobs/worker/sharded_state.py). Each save's stall is split into its parts
(the wait for the previous write, the barrier, the RNG file, get_state_dict, the copy to host
memory, the rest of DCP's save call). The job's last wait (the end of training waits for the last write)
is reported apart. Then the newest checkpoint is restored on the same 2 ranks and on 1 process
without a process group (2 -> 1, the evaluation and shrink path). Figures are ratios against the
synchronous save of the same run. Target (issue 27): asynchronous stall <= 10% of synchronous.

    .venv/bin/python bench/checkpoint_stall.py [--preset moe_8x] [--saves 4] [--between 2] \\
        [--out bench/results/checkpoint_stall.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rayfleet.cluster.head.processes import free_port
from rayfleet.jobs.client.spec import JobSpec
from rayfleet.jobs.contract import RunInfo
from rayfleet.jobs.worker import checkpoint
from rayfleet.jobs.worker.loop import Trainer
from rayfleet.jobs.worker.sharded_state import StagingWriter


def spec_for(preset: str, mode: str, workers: int) -> JobSpec:
    return JobSpec.model_validate({
        "name": "stall", "pool": "cpu", "workers": workers, "steps": 10_000,
        "parallelism": {"strategy": "moe", "expert_parallel": workers}, "model": {"preset": preset},
        "data": {"seq_len": 64, "global_batch": 2}, "optimizer": {"warmup_steps": 2},
        "checkpoint": {"every": 10_000, "keep": 1, "mode": mode}, "compile": False})


def make_trainer(spec: JobSpec, storage: Path, rank: int, world: int, submission: str) -> Trainer:
    run = RunInfo(storage=str(storage), device="cpu", gpus_per_worker=0, submission_id=submission)
    return Trainer(spec, run, rank, world, torch.device("cpu"), storage / "jobs" / spec.name)


def timed_steps(made: Trainer, count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        made.train_step()
        made.step += 1
        times.append(time.perf_counter() - started)
    return times


def timing(record: list[float], fn: Any) -> Any:
    """`fn`, appending each call's duration to `record` (where a stall goes)."""
    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            record.append(time.perf_counter() - started)
    return timed


# where a save's stall goes: each part's time on the training thread (the background writer's and
# rank 0's committing calls are not stalls), summed per save
PARTS = {"wait_for_previous": (checkpoint.Checkpointer, "finish"), "barrier": (checkpoint.Checkpointer, "_barrier"),
         "rng_file": (checkpoint, "_write_durably"), "get_state_dict": (checkpoint, "get_state_dict"),
         "copy_to_host": (StagingWriter, "stage"), "async_save_call": (checkpoint.dcp, "async_save"),
         "sync_save_call": (checkpoint.dcp, "save")}


def probe_parts() -> dict[str, list[float]]:
    """Wrap every part of PARTS; the lists fill with each call's duration on the main thread."""
    record: dict[str, list[float]] = {name: [] for name in PARTS}
    for name, (owner, attribute) in PARTS.items():
        setattr(owner, attribute, on_main_thread(record[name], getattr(owner, attribute)))
    return record


def on_main_thread(record: list[float], fn: Any) -> Any:
    timed = timing(record, fn)

    def either(*args: Any, **kwargs: Any) -> Any:
        return (timed if threading.current_thread() is threading.main_thread() else fn)(*args, **kwargs)
    return either


def rank_main(rank: int, world: int, port: int, args: argparse.Namespace, storage: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    parts = probe_parts()
    torch.set_num_threads(1)  # two ranks on a shared 2-core machine
    dist.init_process_group("gloo", rank=rank, world_size=world)
    result: dict[str, Any] = {}
    for mode in ("sync", "async"):
        # a job folder per mode: the asynchronous run's first commit would otherwise prune the
        # synchronous run's checkpoints (earlier runs' are rank 0's to delete, loop.py), 5.4 s of
        # rmtree in its second save (bench/results/checkpoint_stall_shared_job_folder.json)
        made = make_trainer(spec_for(args.preset, mode, world), Path(storage) / mode, rank, world, mode)
        # the first save, like the others, `between` steps after the one before (training's start):
        # a job's first checkpoint comes `checkpoint.every` steps in
        steps = timed_steps(made, args.between)
        stalls, during, breakdown = [], [], []
        for _ in range(args.saves):
            before = {name: len(calls) for name, calls in parts.items()}
            started = time.perf_counter()
            made.save()  # asynchronous: waits for the previous write, copies, starts the writer
            stalls.append(time.perf_counter() - started)
            breakdown.append({name: sum(calls[before[name]:]) for name, calls in parts.items()})
            during += timed_steps(made, args.between)
        started = time.perf_counter()
        made.finish_checkpoint()
        result[mode] = {"stall_s": stalls, "final_wait_s": time.perf_counter() - started,
                        "step_s": steps + during, "staging_s": [b["copy_to_host"] for b in breakdown],
                        "parts_s": breakdown}
        dist.barrier()
    latest = checkpoint.latest_checkpoint(Path(storage) / "async" / "jobs" / "stall")
    made = make_trainer(spec_for(args.preset, "sync", world), Path(storage) / "async", rank, world, "restore")
    dist.barrier()
    started = time.perf_counter()
    made.checkpointer.load(latest)
    dist.barrier()
    result["restore_same_world_s"] = time.perf_counter() - started
    result["checkpoint"] = str(latest)
    if rank == 0:
        Path(out).write_text(json.dumps(result))
    dist.destroy_process_group()


def restore_on_one_process(preset: str, storage: Path, latest: Path) -> float:
    made = make_trainer(spec_for(preset, "sync", 1), storage, 0, 1, "restore-1")
    started = time.perf_counter()
    made.checkpointer.load(latest)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="moe_8x")
    parser.add_argument("--saves", type=int, default=4)
    parser.add_argument("--between", type=int, default=2, help="training steps between checkpoints")
    parser.add_argument("--out", default="bench/results/checkpoint_stall.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="checkpoint-stall-") as storage:
        out = str(Path(storage) / "ranks.json")
        mp.spawn(rank_main, args=(2, free_port(), args, storage, out), nprocs=2, join=True)
        ranks = json.loads(Path(out).read_text())
        latest = Path(ranks["checkpoint"])
        size = sum(f.stat().st_size for f in latest.iterdir())
        torch.set_num_threads(1)
        restore_1 = restore_on_one_process(args.preset, Path(storage) / "async", latest)
    sync = statistics.mean(ranks["sync"]["stall_s"])
    later = statistics.mean(ranks["async"]["stall_s"][1:])
    rows = [
        ("synchronous save (mean)", sync, 1.0),
        ("asynchronous save (mean)", statistics.mean(ranks["async"]["stall_s"]),
         statistics.mean(ranks["async"]["stall_s"]) / sync),
        ("asynchronous save, the first", ranks["async"]["stall_s"][0], ranks["async"]["stall_s"][0] / sync),
        ("  of which the copy to host memory", ranks["async"]["staging_s"][0], ranks["async"]["staging_s"][0] / sync),
        ("asynchronous save, later ones (mean)", later, later / sync),
        ("asynchronous: the job's last wait", ranks["async"]["final_wait_s"], ranks["async"]["final_wait_s"] / sync),
        ("restore on 2 ranks (written by 2)", ranks["restore_same_world_s"], ranks["restore_same_world_s"] / sync),
        ("restore on 1 process (written by 2)", restore_1, restore_1 / sync),
    ]
    print(f"checkpoint stall, {args.preset}, 2 gloo ranks on CPU (rank 0), checkpoint {size / 2**30:.2f} GiB, "
          f"{args.saves} saves {args.between} steps apart per mode")
    print(f"{'what':<40} {'seconds':>9} {'x sync':>8}")
    for name, seconds, ratio in rows:
        print(f"{name:<40} {seconds:>9.3f} {ratio:>8.3f}")
    print("where each save's stall goes (seconds, rank 0; async_save_call includes copy_to_host):")
    print(f"{'mode':<6} {'save':>4} {'stall':>7} " + " ".join(f"{name:>17}" for name in PARTS))
    for mode in ("sync", "async"):
        for index, (stall, parts) in enumerate(zip(ranks[mode]["stall_s"], ranks[mode]["parts_s"])):
            print(f"{mode:<6} {index + 1:>4} {stall:>7.3f} " + " ".join(f"{parts[name]:>17.3f}" for name in PARTS))
    step_sync = statistics.median(ranks["sync"]["step_s"][1:])
    step_async = statistics.median(ranks["async"]["step_s"][1:])
    print(f"median training step: {step_sync:.3f} s between synchronous saves, {step_async:.3f} s while "
          f"asynchronous writes run ({step_async / step_sync:.2f}x)")
    result = {
        "preset": args.preset, "ranks": 2, "device": "cpu", "backend": "gloo", "saves": args.saves,
        "steps_between": args.between, "checkpoint_bytes": size,
        "sync_stall_s": ranks["sync"]["stall_s"], "async_stall_s": ranks["async"]["stall_s"],
        "async_final_wait_s": ranks["async"]["final_wait_s"],
        "async_stall_ratio": statistics.mean(ranks["async"]["stall_s"]) / sync,
        "async_staging_s": ranks["async"]["staging_s"], "async_later_stall_ratio": later / sync,
        "stall_parts_s": {"sync": ranks["sync"]["parts_s"], "async": ranks["async"]["parts_s"]},
        "restore_2_to_2_s": ranks["restore_same_world_s"], "restore_2_to_1_s": restore_1,
        "restore_2_to_1_ratio_to_sync_save": restore_1 / sync,
        "step_s": {"sync": ranks["sync"]["step_s"], "async": ranks["async"]["step_s"]},
        "step_slowdown_during_async_write": step_async / step_sync,
        "target_async_stall_ratio_max": 0.10,
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "torch": torch.__version__,
                    "platform": platform.platform()},
        "command": "bench/checkpoint_stall.py " + " ".join(sys.argv[1:]),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
