"""Benchmark: from a hard node kill to training resumed, rayfleet against Ray Train alone.

Both runs train the same job (2 DDP workers of the tiny model, a checkpoint every 5 steps) with
the same entrypoint on the same machine, and lose a node the same way: every process of a node
running a training worker is SIGKILLed at once.
- rayfleet: a local fleet (2 nodes + 1 hot spare) under its controller.
- Ray Train alone: a plain Ray cluster (head + 3 labelled nodes, one idle: the same capacity).
Phases, each measured from the kill: detection (rayfleet: the controller's `lost` event; Ray: the
GCS marking the node dead), replacement (rayfleet: the spare admitted; Ray: nothing replaces it,
the idle node is used), restore (the first training step of the resumed attempt).

    python bench/recovery.py [--repeat N]      -> a table, and bench/results/recovery.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rayfleet.cluster.rayio import gcs  # noqa: E402
from rayfleet.cluster.rayio.connection import use_token  # noqa: E402
from rayfleet.cluster.head.processes import Owned, descendants, free_port, process_of, spawn_detached, stop_tree  # noqa: E402
from rayfleet.cluster.providers.local import node_environment, ray_executable  # noqa: E402
from rayfleet.cluster.spec.capabilities import capabilities  # noqa: E402

RAYFLEET = str(Path(sys.executable).with_name("rayfleet"))
JOB = {"name": "recovery", "pool": "h100", "workers": 2, "steps": 400, "model": {"preset": "tiny"},
       "data": {"seq_len": 128, "global_batch": 8}, "checkpoint": {"every": 5}}
KILL_AT_STEP = 12


def wait(predicate: Callable[[], Any], timeout: float = 600.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError("benchmark condition not reached")


def curve(job_dir: Path) -> list[dict[str, Any]]:
    points = []
    for path in job_dir.glob("runs/*/metrics.jsonl"):
        points += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sorted(points, key=lambda p: p["time"])


def worker_node_tree(marker: str) -> list[Owned]:
    """Every process of the node (its `ray start` and below) that runs a training worker."""
    import psutil

    for process in psutil.process_iter(["name"]):
        if "RayTrainWorker" not in (process.info["name"] or ""):
            continue
        ancestor = process.parent()
        while ancestor is not None:
            if marker in " ".join(ancestor.cmdline()) and ancestor.name() != "raylet":
                root = Owned(ancestor.pid, ancestor.create_time())
                return [root, *descendants(root)]
            ancestor = ancestor.parent()
    raise RuntimeError("no training worker found")


def hard_kill(tree: list[Owned]) -> float:
    for member in tree:
        process = process_of(member)
        if process is not None:
            process.send_signal(signal.SIGKILL)
    return time.time()


def resumed_at(job_dir: Path, killed: float) -> float:
    def first_after() -> float | None:
        late = [p for p in curve(job_dir) if p["time"] > killed and p.get("restarts", 0) >= 1]
        return late[0]["time"] if late else None
    return wait(first_after, interval=0.2)


def run_rayfleet(tmp: Path) -> dict[str, float]:
    tmp.mkdir(parents=True, exist_ok=True)
    home = tmp / "home"
    env = {**os.environ, "RAYFLEET_HOME": str(home)}
    fleet = tmp / "fleet.yaml"
    fleet.write_text(yaml.safe_dump({"name": "bench-recovery", "pools": [
        {"name": "h100", "accelerator": "H100", "gpus_per_node": 8, "cpus_per_node": 1, "memory": "8Gi",
         "min_nodes": 1, "max_nodes": 4, "nodes": 2, "hot_spares": 1}]}))
    job = tmp / "job.yaml"
    job.write_text(yaml.safe_dump(JOB))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([RAYFLEET, *args], capture_output=True, text=True, timeout=600, env=env)

    assert cli("up", "-f", str(fleet)).returncode == 0
    try:
        assert cli("submit", "-f", str(job)).returncode == 0
        job_dir = home / "fleets" / "bench-recovery" / "storage" / "jobs" / "recovery"
        wait(lambda: any(p["step"] >= KILL_AT_STEP for p in curve(job_dir)), interval=0.2)
        killed = hard_kill(worker_node_tree("rayfleet.io/fleet=bench-recovery,"))
        resumed = resumed_at(job_dir, killed)
        events = json.loads(cli("events", "-o", "json", "--limit", "1000").stdout)
        lost = next(e["time"] for e in events if e["kind"] == "lost" and e["time"] >= killed - 1)
        admitted = next(e["time"] for e in events if e["kind"] == "admitted" and e["time"] >= lost)
        return {"detect_s": lost - killed, "replace_s": admitted - killed, "resume_s": resumed - killed}
    finally:
        cli("stop", "recovery")
        cli("down")


class PlainRay:
    """A plain Ray cluster on this machine, no rayfleet: a head with no CPUs and labelled
    one-CPU, 8-GPU nodes of pool h100 (`rayfleet.io/instance=alone-N`). Stops what it started."""

    def __init__(self, tmp: Path, nodes: int) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.tmp = tmp
        token = tmp / "token"
        token.write_text(os.urandom(16).hex())
        self.env = node_environment(token)
        port, self.dashboard = free_port(), free_port()
        self.address = f"127.0.0.1:{port}"
        self.processes: list[Owned] = []
        try:
            self.processes.append(spawn_detached(
                [ray_executable(), "start", "--head", "--block", f"--port={port}", "--num-cpus=0",
                 "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard}",
                 f"--ray-client-server-port={free_port()}", f"--temp-dir={tmp}/h", "--disable-usage-stats"],
                tmp / "head.log", self.env))
            use_token(token)
            wait(lambda: gcs.reachable(self.address))
            for _ in range(nodes):
                self.add_node()
            self.client = gcs.client(self.address)
            wait(lambda: sum(n.alive for n in gcs.read_nodes(self.client)) == nodes + 1, interval=0.2)
        except BaseException:
            self.stop()
            raise

    def add_node(self) -> None:
        index = len(self.processes) - 1
        self.processes.append(spawn_detached(
            [ray_executable(), "start", "--block", f"--address={self.address}", "--num-cpus=1", "--num-gpus=8",
             f"--temp-dir={self.tmp}/n{index}",
             f"--labels=rayfleet.io/pool=h100,rayfleet.io/instance=alone-{index}", "--disable-usage-stats"],
            self.tmp / f"n{index}.log", self.env))

    def submit(self, spec: Any, storage: Path, submission_id: str) -> Any:
        """The project's entrypoint through Ray's Job API, as `rayfleet submit` runs it, with Ray
        Train's own polling periods and no job metadata."""
        from ray.job_submission import JobSubmissionClient

        from rayfleet.jobs.client.submit import submit_driver
        from rayfleet.jobs.contract import RunInfo, python_for

        run = RunInfo(storage=str(storage), device="cpu", gpus_per_worker=1, submission_id=submission_id)
        jobs = JobSubmissionClient(f"http://127.0.0.1:{self.dashboard}")
        submit_driver(jobs, spec, run, python_for(capabilities("local")), ray_train_defaults=True)
        return jobs

    def stop(self) -> None:
        for owned in reversed(self.processes):
            stop_tree(owned, grace_s=3)


def run_ray_alone(tmp: Path) -> dict[str, float]:
    """The same entrypoint on a plain Ray cluster: no rayfleet controller, Ray's own failover."""
    from rayfleet.jobs.client.spec import JobSpec

    cluster = PlainRay(tmp, nodes=3)
    try:
        storage = tmp / "storage"
        # Ray Train's own defaults: no polling overrides
        jobs = cluster.submit(JobSpec.model_validate(JOB), storage, "alone-1")
        job_dir = storage / "jobs" / "recovery"
        wait(lambda: any(p["step"] >= KILL_AT_STEP for p in curve(job_dir)), interval=0.2)
        tree = worker_node_tree("rayfleet.io/instance=alone-")
        instance = " ".join(process_of(tree[0]).cmdline()).split("rayfleet.io/instance=")[1].split()[0]
        dead_node = next(n.node_id for n in gcs.read_nodes(cluster.client) if n.alive and n.instance == instance)
        killed = hard_kill(tree)
        wait(lambda: not any(n.alive for n in gcs.read_nodes(cluster.client) if n.node_id == dead_node),
             interval=0.1)
        detected = time.time()
        resumed = resumed_at(job_dir, killed)
        jobs.stop_job("alone-1")
        return {"detect_s": detected - killed, "replace_s": float("nan"), "resume_s": resumed - killed}
    finally:
        cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "recovery.json"))
    args = parser.parse_args()
    ours, alone = [], []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="rf-recovery-") as tmp:
            alone.append(run_ray_alone(Path(tmp) / "alone"))
            ours.append(run_rayfleet(Path(tmp) / "fleet"))
    med = {k: statistics.median(r[k] for r in ours) for k in ours[0]}
    ref = {k: statistics.median(r[k] for r in alone) for k in alone[0]}
    print(f"{'phase (s after the kill)':28} {'rayfleet':>9} {'Ray alone':>10} {'ratio':>6}")
    for key, name in (("detect_s", "failure detected"), ("replace_s", "replacement admitted"),
                      ("resume_s", "training resumed")):
        ratio = med[key] / ref[key] if ref[key] == ref[key] and ref[key] else float("nan")
        print(f"{name:28} {med[key]:9.1f} {ref[key]:10.1f} {ratio:6.2f}")
    out = {"benchmark": "recovery", "date": time.strftime("%Y-%m-%d"), "machine": platform.node(),
           "cpus": os.cpu_count(), "repeat": args.repeat, "rayfleet": ours, "ray_alone": alone,
           "median": {"rayfleet": med, "ray_alone": ref}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
