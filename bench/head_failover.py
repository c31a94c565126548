"""Benchmark: SIGKILL of every head process while a job trains, in three setups, in one run.

- fault tolerant: Redis-backed GCS, the driver on a worker node (rayfleet's default there);
- driver on the head: the same fleet, but the job's driver on the head (Ray Jobs' default);
- no fault tolerance: the GCS in the head's memory.
Each: a local fleet of 2 nodes, a 2-worker DDP job of the tiny model; the head's whole process
tree is SIGKILLed after 40 steps. Phases from the kill: head back (the supervisor restarted it
and its GCS answers), controller back (a new controller published status), and the longest gap
between two training steps; plus how the job ended.

    python bench/head_failover.py     -> a table, and bench/results/head_failover.json
"""
from __future__ import annotations

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

from rayfleet.cluster.rayio import gcs  # noqa: E402

RAYFLEET = str(Path(sys.executable).with_name("rayfleet"))
STEPS, KILL_AFTER = 400, 40
SETUPS = {"fault tolerant": (True, "auto"), "driver on the head": (True, "head"), "no fault tolerance": (False, "auto")}


def wait(predicate: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return None


def run(tmp: Path, name: str, fault_tolerant: bool, driver: str) -> dict[str, Any]:
    tmp.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "RAYFLEET_HOME": str(tmp / "home")}
    fleet_dir = tmp / "home" / "fleets" / name

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([RAYFLEET, *args], capture_output=True, text=True, timeout=600, env=env)

    (tmp / "fleet.yaml").write_text(yaml.safe_dump({
        "name": name, "head": {"fault_tolerance": {"enabled": fault_tolerant}},
        "pools": [{"name": "h100", "accelerator": "H100", "gpus_per_node": 8, "cpus_per_node": 1,
                   "memory": "8Gi", "min_nodes": 1, "max_nodes": 3, "nodes": 2}]}))
    (tmp / "job.yaml").write_text(yaml.safe_dump({
        "name": "bench", "pool": "h100", "workers": 2, "steps": STEPS, "driver": driver,
        "model": {"preset": "tiny"}, "data": {"seq_len": 128, "global_batch": 8}, "checkpoint": {"every": 10}}))
    assert cli("up", "-f", str(tmp / "fleet.yaml")).returncode == 0
    job_dir = fleet_dir / "storage" / "jobs" / "bench"

    def curve() -> list[dict[str, Any]]:
        points = [json.loads(line) for path in job_dir.glob("runs/*/metrics.jsonl")
                  for line in path.read_text().splitlines() if line.strip()]
        return sorted(points, key=lambda p: p["time"])

    try:
        assert cli("submit", "-f", str(tmp / "job.yaml")).returncode == 0
        wait(lambda: len(curve()) >= KILL_AFTER, 300, 0.2)
        head = json.loads((fleet_dir / "head.json").read_text())
        controller = json.loads(cli("status", "-o", "json").stdout)["controller"]["pid"]
        root = psutil.Process(head["pid"])
        for process in [root, *root.children(recursive=True)]:
            try:
                process.send_signal(signal.SIGKILL)
            except psutil.Error:
                pass
        killed = time.time()
        wait(lambda: not gcs.reachable(head["gcs_address"], 0.2), 10, 0.05)  # the kill took effect
        head_back = wait(lambda: gcs.reachable(head["gcs_address"], 0.2) and time.time(), 120 if fault_tolerant else 20)

        def controller_back() -> float | None:
            result = cli("status", "-o", "json")
            return time.time() if result.returncode == 0 and json.loads(result.stdout)["controller"]["pid"] != controller \
                else None
        back = wait(controller_back, 120, 0.5) if head_back else None
        ended = wait(lambda: (rows := json.loads(cli("jobs", "--all", "-o", "json").stdout or "[]")) and
                     rows[0]["status"] in ("SUCCEEDED", "FAILED", "STOPPED") and rows[0], 400 if head_back else 30, 1.0)
        points = curve()
        after = [p for p in points if p["time"] > killed]
        gaps = [b["time"] - a["time"] for a, b in zip(points, points[1:])]
        return {"head_back_s": head_back - killed if head_back else None,
                "controller_back_s": back - killed if back else None,
                "longest_step_gap_s": max(gaps) if after else None,
                "steps_after_kill": len(after), "final_step": points[-1]["step"] if points else None,
                "attempts": len({p.get("restarts", 0) for p in points}),
                "job": (ended or {}).get("status", "lost with the head")}
    finally:
        cli("down")


def main() -> None:
    results = {}
    for setup, (fault_tolerant, driver) in SETUPS.items():
        with tempfile.TemporaryDirectory(prefix="rf-headfo-") as tmp:
            results[setup] = run(Path(tmp), "bench-head", fault_tolerant, driver)
    def fmt(value: Any) -> str:
        return "-" if value is None else f"{value:.1f}" if isinstance(value, float) else str(value)
    print(f"{'setup':20} {'head back':>9} {'ctrl back':>9} {'max step gap':>12} {'steps after':>11} {'job':>10}")
    for setup, r in results.items():
        print(f"{setup:20} {fmt(r['head_back_s']):>9} {fmt(r['controller_back_s']):>9} "
              f"{fmt(r['longest_step_gap_s']):>12} {r['steps_after_kill']:>11} {r['job']:>10}")
    out = ROOT / "bench" / "results" / "head_failover.json"
    out.write_text(json.dumps({"benchmark": "head_failover", "date": time.strftime("%Y-%m-%d"),
                               "machine": platform.node(), "cpus": os.cpu_count(), "results": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
