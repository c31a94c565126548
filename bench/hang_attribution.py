"""Hang attribution: how often the evidence names the rank that really hung.

Each trial runs rayfleet's own training loop (jobs/worker/loop.py's Trainer: DDP on gloo, a tiny
model, steps padded to --step-s) on 2 or 3 ranks in local processes, makes one random rank hang
in one of five ways, waits until no rank advances for the hang bound (3 x median step + margin),
then reads each rank's evidence exactly as a node's health agent does for the controller (process
state through psutil, the step counters in shared memory, the flight recorder's collectives, the
py-spy stack) and decides with
jobs/supervision/attribution.py. Kinds:

  stop-before  SIGSTOP inside its step, before its collectives (the victim's step starts with a
               short stall of its own, and it is stopped during it)
  stop-inside  SIGSTOP inside the step's collective (the others start their steps a little late,
               so the victim waits in the gradient all-reduce when it is stopped)
  stop-after   SIGSTOP after its step (in the padding sleep, the others already in the next one)
  sleep        the rank's main thread sleeps (a Python `time.sleep` from a signal handler, at a
               random point of its step)
  spin         the rank's main thread spins in a busy loop (the same way)
Where a stopped rank really was is read off its stack and counters and recorded beside the target.

Verdicts: right (the hung rank named alone), candidates (undecided, the hung rank among the
candidates named: allowed), wrong (another rank named). Prints a table, writes JSON.
The controller's own path (Ray, the agents, the kill) is tested in tests/jobs/test_resilience_fleet.py.

The first step after detection is not measured here: these ranks are local processes, not a Ray
Train group, so a restart here (fork, a new gloo group, no checkpoint) would time none of what a
job's restart costs. bench/ettr.py measures it through the product: its SIGSTOP fault's
`first_step_after_detection_s` (the culprit killed by the controller, Ray Train's restart on warm
standbys, the resume from the newest checkpoint).

    .venv/bin/python bench/hang_attribution.py [--trials 20] [--parallel 6] [--out bench/results/hang_attribution.json]
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import multiprocessing as mp
import os
import random
import shutil
import signal
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from rayfleet.cluster.health import flight_recorder, rank_evidence, stepmarks
from rayfleet.jobs.supervision.attribution import RankEvidence, attribute

KINDS = ("stop-before", "stop-inside", "stop-after", "sleep", "spin")
LAG_S = 0.12  # the stall at a step's start that puts a stop before (or, for the others, inside) the collective
FACTOR, MARGIN_S = 3.0, 1.0  # the bound: 3 x median step + 1 s (the product's default margin is 10 s)


def _hang_forever(signum: int, frame: Any) -> None:
    while True:
        time.sleep(3600)


def _spin_forever(signum: int, frame: Any) -> None:
    x = 0
    while True:
        x += 1


def rank_main(rank: int, world: int, port: int, storage: str, step_s: float, lag_s: float, ready: Any) -> None:
    import torch
    import torch.distributed as dist

    from rayfleet.jobs.client.spec import JobSpec
    from rayfleet.jobs.contract import RunInfo
    from rayfleet.jobs.supervision import history
    from rayfleet.jobs.worker.loop import Trainer

    devnull = os.open(os.devnull, os.O_WRONLY)  # a rank whose peer is killed prints gloo's traceback
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    signal.signal(signal.SIGUSR1, _hang_forever)
    signal.signal(signal.SIGUSR2, _spin_forever)
    torch.set_num_threads(1)
    os.environ[flight_recorder.BUFFER_ENV] = str(flight_recorder.BUFFER_SIZE)  # as a job's environment sets it
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    spec = JobSpec.model_validate({"name": "bench", "pool": "cpu", "workers": world, "model": {"preset": "tiny"},
                                   "data": {"seq_len": 32, "global_batch": 2 * world}, "steps": 100_000,
                                   "checkpoint": {"every": 100_000}, "step_time_s": step_s, "log_every": 100_000})
    run = RunInfo(storage=storage, device="cpu", gpus_per_worker=0, submission_id="bench-1")
    trainer = Trainer(spec, run, rank, world, torch.device("cpu"), history.job_dir(storage, "bench"))
    trainer.marks = stepmarks.StepMarks()
    trainer.collectives = flight_recorder.Responder()
    if lag_s:
        step = trainer.train_step

        def lagged() -> Any:
            time.sleep(lag_s)
            return step()
        trainer.train_step = lagged  # type: ignore[method-assign]
    ready.put((rank, os.getpid()))
    trainer.train()


def distinct_ports(count: int) -> list[int]:
    """`count` ports, all free at once (held together while chosen, so no two are the same)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def marks_of(pids: dict[int, int]) -> dict[int, dict[str, Any] | None]:
    return {rank: stepmarks.read(pid) for rank, pid in pids.items()}


def wait_for_steps(pids: dict[int, int], steps: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = marks_of(pids)
        if all(m and m["finished"] >= steps for m in seen.values()):
            return
        time.sleep(0.02)
    raise RuntimeError(f"the ranks did not reach step {steps}")


def where_stopped(marks: dict[str, Any] | None, stack: str) -> str:
    """before / inside / after its step's collectives, read off the stopped rank itself."""
    evidence = RankEvidence(rank=0, pid=0, node_id="", stack=stack)
    if evidence.in_collective:
        return "inside"
    if marks and marks["started"] > marks["finished"]:
        return "before"  # in its step, not (yet) in a collective
    return "after"


def trial(world: int, kind: str, step_s: float, seed: int, port: int) -> dict[str, Any]:
    rng = random.Random(seed)
    context = mp.get_context("fork")
    ready = context.Queue()
    storage = tempfile.mkdtemp(prefix="rayfleet-hang-bench-")
    victim = rng.randrange(world)
    lags = {r: (LAG_S if (kind == "stop-before") == (r == victim) else 0.0) if kind in ("stop-before", "stop-inside")
            else 0.0 for r in range(world)}
    procs = [context.Process(target=rank_main, args=(r, world, port, storage, step_s, lags[r], ready), daemon=True)
             for r in range(world)]
    for p in procs:
        p.start()
    try:
        pids = dict(ready.get(timeout=120) for _ in range(world))
        wait_for_steps(pids, 6)
        # the moment: a step's start (+ part of the lag: before or inside), its end (+ a little:
        # after), or a random point of a step (sleep, spin)
        field = "finished" if kind == "stop-after" else "started"
        start = marks_of(pids)[victim][field]
        deadline = time.monotonic() + 30
        while marks_of(pids)[victim][field] == start and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(rng.uniform(0.2, 0.6) * LAG_S if kind.startswith("stop-") else rng.uniform(0, step_s))
        injected = time.time()
        if kind.startswith("stop-"):
            os.kill(pids[victim], signal.SIGSTOP)
        else:
            os.kill(pids[victim], signal.SIGUSR1 if kind == "sleep" else signal.SIGUSR2)
        # detection: no rank finished or started a step for the bound
        durations = step_s
        last_change, last = time.time(), marks_of(pids)
        while True:
            time.sleep(0.05)
            now_marks = marks_of(pids)
            if now_marks != last:
                last, last_change = now_marks, time.time()
            if time.time() - last_change > FACTOR * durations + MARGIN_S:
                break
            if time.time() - injected > 120:
                raise RuntimeError("no stall after the fault")
        detected = time.time()
        evidence = {}
        stacks = {}
        for rank, pid in pids.items():  # read as a node's agent reads it for the controller
            seen = rank_evidence.inspect(pid)
            stacks[rank] = rank_evidence.dump_stacks(pid)
            marks = seen["marks"]
            evidence[rank] = RankEvidence(rank=rank, pid=pid, node_id="local", state=seen["state"],
                                          started=marks and marks["started"], finished=marks and marks["finished"],
                                          stack=stacks[rank], collectives=seen["collectives"])
        found = attribute(evidence)
        verdict = ("right" if found.culprits == (victim,) else "wrong" if found.culprits else
                   "candidates" if victim in found.candidates else "wrong")
        where = where_stopped(marks_of(pids)[victim], stacks[victim]) if kind.startswith("stop-") else None
        return {"world": world, "kind": kind, "stopped_where": where, "victim": victim, "verdict": verdict, "culprits": list(found.culprits),
                "candidates": list(found.candidates), "decided_by": found.decided_by,
                "detection_s": round(detected - injected, 3), "bound_s": FACTOR * durations + MARGIN_S,
                "findings": found.to_json()["findings"]}
    finally:
        for p in procs:
            if p.pid:
                try:
                    os.kill(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            p.join(timeout=10)
        stepmarks.sweep()
        flight_recorder.sweep()
        shutil.rmtree(storage, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20, help="hangs per kind and world size")
    parser.add_argument("--step-s", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parallel", type=int, default=1,
                        help="trials at once (each its own ranks and port); on a machine with many cores")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "hang_attribution.json"))
    args = parser.parse_args()
    import torch  # noqa: F401  (imported once here: forked ranks start in a fraction of a second)

    trials = [(w, k) for w in (2, 3) for k in KINDS for _ in range(args.trials)]
    ports = distinct_ports(len(trials))  # trials run at once must not draw the same rendezvous port
    plan = [(world, kind, args.step_s, args.seed * 1_000_003 + index, ports[index])
            for index, (world, kind) in enumerate(trials)]
    results = []
    with concurrent.futures.ProcessPoolExecutor(args.parallel, mp_context=mp.get_context("fork")) as pool:
        for result in pool.map(trial, *zip(*plan)):
            results.append(result)
            print(json.dumps(result), flush=True)
    rows = {}
    for r in results:
        rows.setdefault((r["world"], r["kind"]), []).append(r)
    print(f"\n{'ranks':>5} {'kind':<12} {'trials':>6} {'right':>6} {'candidates':>10} {'wrong':>6} "
          f"{'detect s (median)':>18} {'bound s':>8}  {'stopped where':<16} decided by")
    table = []
    for (world, kind), group in sorted(rows.items()):
        counts = {v: sum(r["verdict"] == v for r in group) for v in ("right", "candidates", "wrong")}
        detect = statistics.median(r["detection_s"] for r in group)
        where = dict(collections.Counter(r["stopped_where"] for r in group if r["stopped_where"]))
        deciders = dict(collections.Counter(r["decided_by"] or "undecided" for r in group))
        table.append({"ranks": world, "kind": kind, "trials": len(group), **counts, "detection_s_median": detect,
                      "bound_s": group[0]["bound_s"], "stopped_where": where, "decided_by": deciders})
        print(f"{world:>5} {kind:<12} {len(group):>6} {counts['right']:>6} {counts['candidates']:>10} "
              f"{counts['wrong']:>6} {detect:>18.2f} {group[0]['bound_s']:>8.2f}  "
              f"{' '.join(f'{k}:{v}' for k, v in sorted(where.items())) or '-':<16} "
              f"{' '.join(f'{k}:{v}' for k, v in sorted(deciders.items()))}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"trials_per_kind": args.trials, "step_s": args.step_s, "seed": args.seed,
                                          "cpus": os.cpu_count(), "parallel": args.parallel, "table": table, "trials": results}, indent=1))
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
