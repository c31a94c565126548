"""Benchmark: a job's effective training time ratio (ETTR) through a schedule of faults, rayfleet
against Ray Train alone, in the same run on the same machine.

The job (issue 15's schedule): 2 gloo workers of the tiny model, 80 steps padded to 0.5 s
(`step_time_s`), a checkpoint every 5 steps, on 3 one-CPU nodes. Faults, by the job's step:
    step 15  a node running a worker is hard-killed (every process of it, SIGKILL)
    step 35  a training worker is stopped (SIGSTOP): a hang
    step 55  a node running a worker is hard-killed
             (--notice variant, rayfleet only: a 10 s preemption notice for that node instead;
             Ray alone cannot see notices, so its node simply dies: the kill above)
Ray alone gets an idealised autoscaler: a new node starts the moment one is killed.
Both runs use the project's entrypoint, so both write the job history that jobs/supervision/goodput.py
accounts: ETTR = kept training time / wall time, and per fault the time from the last step to
detection (`detection_s`) and to the first step after it (`first_step_after_s`), the first step
after detection (`first_step_after_detection_s`: the SIGSTOP fault's is the hang bench's "first
step after detection" through the product: the culprit killed, Ray Train's restart, the resume),
and the steps redone. Ray alone has no detection events: its detection is the whole gap until its
workers restarted.

    python bench/ettr.py [--skip-alone] [--checkpoint-mode sync]     -> a table, and bench/results/ettr.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from rayfleet.jobs.supervision import history  # noqa: E402
from rayfleet.jobs.supervision import goodput
from recovery import PlainRay, hard_kill, wait, worker_node_tree  # noqa: E402

RAYFLEET = str(Path(sys.executable).with_name("rayfleet"))
STEPS, STEP_S = 80, 0.5
JOB = {"pool": "h100", "workers": 2, "steps": STEPS, "model": {"preset": "tiny"}, "step_time_s": STEP_S,
       "data": {"seq_len": 64, "global_batch": 4}, "checkpoint": {"every": 5}, "failure": {"max_restarts": 10}}


def at_step(storage: Path, name: str, step: int) -> None:
    def reached() -> bool:
        return any(e["event"] == "step" and e["step"] >= step for e in history.events(storage, name)[-50:])
    wait(reached, timeout=1200, interval=0.1)


def stop_a_worker(marker: str) -> psutil.Process:
    """SIGSTOP one training worker of the fleet whose node command line carries `marker`."""
    for process in psutil.process_iter(["name"]):
        if "RayTrainWorker" in (process.info["name"] or ""):
            ancestor = process.parent()
            while ancestor is not None and marker not in " ".join(ancestor.cmdline()):
                ancestor = ancestor.parent()
            if ancestor is not None:
                process.send_signal(signal.SIGSTOP)
                return process
    raise RuntimeError("no training worker to stop")


def schedule(storage: Path, name: str, marker: str, last: Callable[[], None] | None = None,
             replace: Callable[[], None] = lambda: None) -> None:
    """`replace`: what brings a node back after a kill (rayfleet's controller does it itself)."""
    at_step(storage, name, 15)
    hard_kill(worker_node_tree(marker))
    replace()
    at_step(storage, name, 35)
    stopped = stop_a_worker(marker)
    at_step(storage, name, 55)
    if stopped.is_running():
        try:
            stopped.send_signal(signal.SIGCONT)
        except psutil.Error:
            pass
    if last is not None:
        last()
    else:
        hard_kill(worker_node_tree(marker))
        replace()


def finished(storage: Path, name: str) -> dict[str, Any]:
    wait(lambda: any(e["event"] == "finished" for e in history.events(storage, name)), timeout=1800, interval=0.5)
    figures = goodput.of_job(storage, name, time.time())
    assert figures is not None
    done = [e for e in history.events(storage, name) if e["event"] == "finished"][-1]
    out = {"state": done.get("state"), "final_step": done.get("step"), **figures.to_json()}
    for fault in out["faults"]:  # goodput times both from the last step before the fault
        fault["first_step_after_detection_s"] = round(fault["first_step_after_s"] - fault["detection_s"], 3)
    return out


def run_rayfleet(tmp: Path, notice: bool) -> dict[str, Any]:
    tmp.mkdir(parents=True, exist_ok=True)
    home = tmp / "home"
    env = {**os.environ, "RAYFLEET_HOME": str(home)}
    fleet = tmp / "fleet.yaml"
    fleet.write_text(yaml.safe_dump({"name": "bench-ettr", "pools": [
        {"name": "h100", "accelerator": "H100", "gpus_per_node": 8, "cpus_per_node": 1, "memory": "8Gi",
         "min_nodes": 1, "max_nodes": 4, "nodes": 2, "hot_spares": 1}],
        "health": {"max_replacements_per_hour": 20}}))
    name = "ettr-notice" if notice else "ettr"
    job = tmp / f"{name}.yaml"
    job.write_text(yaml.safe_dump({"name": name, **JOB}))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([RAYFLEET, *args], capture_output=True, text=True, timeout=600, env=env)

    up = cli("up", "-f", str(fleet))
    assert up.returncode == 0, up.stderr
    storage = home / "fleets" / "bench-ettr" / "storage"
    marker = "rayfleet.io/fleet=bench-ettr,"

    def preempt() -> None:
        process = next(p for p in psutil.process_iter(["name"]) if "RayTrainWorker" in (p.info["name"] or ""))
        ancestor = process.parent()
        while "rayfleet.io/instance=" not in " ".join(ancestor.cmdline()):
            ancestor = ancestor.parent()
        instance = " ".join(ancestor.cmdline()).split("rayfleet.io/instance=")[1].split()[0]
        assert cli("chaos", "preempt", instance, "--in", "10").returncode == 0

    try:
        assert cli("submit", "-f", str(job)).returncode == 0
        schedule(storage, name, marker, preempt if notice else None)
        return finished(storage, name)
    finally:
        cli("stop", name)
        cli("down")


def run_ray_alone(tmp: Path) -> dict[str, Any]:
    """The same entrypoint on a plain Ray cluster (head + 3 one-CPU nodes), Ray's own failover."""
    from rayfleet.jobs.client.spec import JobSpec

    cluster = PlainRay(tmp, nodes=3)
    try:
        storage = tmp / "storage"
        # Ray Train's own defaults: its 2 s controller poll, TorchConfig's 1,800 s collective timeout
        spec = JobSpec.model_validate({"name": "ettr", **JOB, "hang": {"enabled": False, "first_steps_timeout_s": 1800},
                                       "failure": {"max_restarts": 10, "poll_interval_s": 2.0}})
        history.record(storage, "ettr", "submitted", submission_id="alone-1", pool="h100", steps=STEPS)
        cluster.submit(spec, storage, "alone-1")
        # Ray has no node replacement of its own: an idealised autoscaler starts a new node the
        # moment one is killed (generous to Ray: no boot time, no detection delay).
        schedule(storage, "ettr", "rayfleet.io/instance=alone-", replace=cluster.add_node)
        return finished(storage, "ettr")
    finally:
        cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-alone", action="store_true", help="rayfleet only (Ray alone takes ~10 minutes)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "ettr.json"))
    parser.add_argument("--checkpoint-mode", choices=("async", "sync"), default="async",
                        help="the job's checkpoint.mode (async, the default, or sync: training waits for the write)")
    args = parser.parse_args()
    JOB["checkpoint"] = {**JOB["checkpoint"], "mode": args.checkpoint_mode}
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="rf-ettr-") as tmp:
        if not args.skip_alone:
            results["ray_alone"] = run_ray_alone(Path(tmp) / "alone")
        results["rayfleet"] = run_rayfleet(Path(tmp) / "fleet", notice=False)
        results["rayfleet_notice"] = run_rayfleet(Path(tmp) / "fleet-notice", notice=True)
    ideal = STEPS * STEP_S
    print(f"ideal work: {STEPS} steps x {STEP_S}s = {ideal:.0f}s")
    print(f"{'run':16} {'state':10} {'wall s':>7} {'ETTR':>6} {'redone':>6}  " + " ".join(f"{p[:8]:>8}" for p in goodput.PARTS))
    for run, figures in results.items():
        print(f"{run:16} {figures['state']:10} {figures['wall_s']:7.1f} {figures['ettr']:6.3f} "
              f"{figures['steps_redone']:6d}  " + " ".join(f"{figures['parts'][p]:8.1f}" for p in goodput.PARTS))
    print(f"\n{'run':16} {'fault':>5} {'after':>5} {'resumed':>7} {'redone':>6} {'detect s':>8} {'1st step s':>10} "
          f"{'after detect s':>14}  cause")
    for run, figures in results.items():
        for index, fault in enumerate(figures["faults"], 1):
            print(f"{run:16} {index:5d} {fault['after_step']:5d} {fault['resumed_from']:7d} {fault['steps_redone']:6d} "
                  f"{fault['detection_s']:8.1f} {fault['first_step_after_s']:10.1f} "
                  f"{fault['first_step_after_detection_s']:14.1f}  {fault['reason'][:50]}")
    if "ray_alone" in results:
        for run in ("rayfleet", "rayfleet_notice"):
            print(f"ETTR {run} / Ray alone: {results[run]['ettr'] / results['ray_alone']['ettr']:.1f}x")
    out = {"benchmark": "ettr", "date": time.strftime("%Y-%m-%d"), "machine": platform.node(),
           "cpus": os.cpu_count(), "ideal_s": ideal, "schedule": "kill@15, SIGSTOP@35, kill@55 (notice@55)",
           "checkpoint_mode": args.checkpoint_mode,
           **results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
