"""Benchmark: `rayfleet up` of 2 pools x 2 nodes, and replacing a SIGKILLed node.

Baselines measured in the same run on the same machine:
- up: a hand-written script doing what a user would without rayfleet: `ray start --head`, then
  four `ray start --address` one after another, until all five nodes are alive in the GCS;
- replacement: how long Ray's GCS itself takes to mark a SIGKILLed node dead (before anything
  could even start replacing it).

Prints a table and writes bench/results/fleet_up.json.
    python bench/fleet_up.py [--repeat N]
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

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rayfleet.cluster.rayio import gcs  # noqa: E402
from rayfleet.cluster.rayio.connection import use_token  # noqa: E402
from rayfleet.cluster.head.processes import Owned, free_port, process_of, spawn_detached, stop_tree  # noqa: E402
from rayfleet.cluster.providers.local import node_environment, ray_executable  # noqa: E402

RAYFLEET = str(Path(sys.executable).with_name("rayfleet"))
POOLS = [{"name": name, "accelerator": gpu, "gpus_per_node": 8, "cpus_per_node": 1, "memory": "8Gi",
          "min_nodes": 0, "max_nodes": 3, "nodes": 2} for name, gpu in (("h100", "H100"), ("a100", "A100"))]


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([RAYFLEET, *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "RAYFLEET_HOME": str(home)})


def wait(predicate, timeout: float = 300.0, interval: float = 0.05):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError("benchmark condition not reached")


def measure_rayfleet(tmp: Path) -> dict[str, float]:
    home = tmp / "home"
    spec = tmp / "bench.yaml"
    spec.write_text(yaml.safe_dump({"name": "bench", "pools": POOLS, "scaling": {"loop_period_s": 0.5}}))
    started = time.monotonic()
    result = cli(home, "up", "-f", str(spec))
    up_s = time.monotonic() - started
    if result.returncode != 0:
        raise RuntimeError(result.stderr)
    try:
        fleet_dir = home / "fleets" / "bench"
        record = json.loads(next((fleet_dir / "nodes").glob("bench-h100-*/node.json")).read_text())
        raylet = next(c for c in process_of(Owned.from_json(record)).children(recursive=True) if c.name() == "raylet")
        victim = record["name"]
        os.kill(raylet.pid, signal.SIGKILL)
        killed = time.time()

        def replaced() -> dict | None:
            status = json.loads(cli(home, "status", "-o", "json").stdout)
            names = {n["instance"] for n in status["nodes"] if n["state"] == "ready"}
            return status if victim not in names and len(names) == 4 else None

        wait(replaced, interval=0.2)
        events = json.loads(cli(home, "events", "-o", "json", "--limit", "1000").stdout)
        lost = next(e["time"] for e in events if e["kind"] == "lost" and e["instance"] == victim)
        launch = next(e for e in events if e["kind"] == "launch" and e["time"] >= lost)
        joined = next(e["time"] for e in events if e["kind"] == "joined" and e["instance"] == launch["instance"])
        return {"up_s": up_s, "detect_s": lost - killed, "replace_launched_s": launch["time"] - killed,
                "replaced_ready_s": joined - killed}
    finally:
        cli(home, "down")


def measure_baseline(tmp: Path) -> dict[str, float]:
    """Five nodes started by hand, one after the other; then Ray's own dead-node detection."""
    tmp.mkdir(parents=True, exist_ok=True)
    token = tmp / "token"
    token.write_text("bench-" + os.urandom(16).hex())
    env = node_environment(token)
    port = free_port()
    started = time.monotonic()
    processes: list[Owned] = []
    try:
        processes.append(spawn_detached([ray_executable(), "start", "--head", "--block", f"--port={port}",
                                         "--num-cpus=1", "--dashboard-host=127.0.0.1",
                                         f"--dashboard-port={free_port()}", f"--ray-client-server-port={free_port()}",
                                         f"--temp-dir={tmp}/h", "--disable-usage-stats"], tmp / "head.log", env))
        use_token(token)
        address = f"127.0.0.1:{port}"
        wait(lambda: gcs.reachable(address))
        client = gcs.client(address)
        for index in range(4):  # a user's script: start each node and wait for it to join
            processes.append(spawn_detached([ray_executable(), "start", "--block", f"--address={address}",
                                             "--num-cpus=1", "--num-gpus=8", f"--temp-dir={tmp}/n{index}",
                                             f"--labels=rayfleet.io/instance=b{index}", "--disable-usage-stats"],
                                            tmp / f"n{index}.log", env))
            wait(lambda: sum(n.alive for n in gcs.read_nodes(client)) == index + 2, interval=0.1)
        up_s = time.monotonic() - started
        victim = processes[-1]
        raylet = next(c for c in process_of(victim).children(recursive=True) if c.name() == "raylet")
        os.kill(raylet.pid, signal.SIGKILL)
        killed = time.monotonic()
        wait(lambda: sum(n.alive for n in gcs.read_nodes(client)) == 4, interval=0.1)
        return {"up_s": up_s, "ray_marks_dead_s": time.monotonic() - killed}
    finally:
        for owned in reversed(processes):
            stop_tree(owned, grace_s=5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "fleet_up.json"))
    args = parser.parse_args()
    ours, base = [], []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="rf-bench-") as tmp:
            base.append(measure_baseline(Path(tmp) / "b"))
            ours.append(measure_rayfleet(Path(tmp)))
    med = {key: statistics.median(run[key] for run in ours) for key in ours[0]}
    ref = {key: statistics.median(run[key] for run in base) for key in base[0]}
    rows = [
        ("up, 2 pools x 2 nodes (s)", med["up_s"], ref["up_s"], "script: head + 4 x ray start"),
        ("kill -> noticed (s)", med["detect_s"], ref["ray_marks_dead_s"], "Ray GCS marks node dead"),
        ("kill -> replacement launched (s)", med["replace_launched_s"], ref["ray_marks_dead_s"], "Ray GCS marks node dead"),
        ("kill -> replacement ready (s)", med["replaced_ready_s"], None, ""),
    ]
    print(f"{'measure':36} {'rayfleet':>9} {'baseline':>9} {'ratio':>6}  baseline is")
    for name, value, baseline, what in rows:
        ratio = f"{value / baseline:.2f}" if baseline else "-"
        print(f"{name:36} {value:9.2f} {baseline if baseline is not None else float('nan'):9.2f} {ratio:>6}  {what}")
    out = {"benchmark": "fleet_up", "date": time.strftime("%Y-%m-%d"), "machine": platform.node(),
           "cpus": os.cpu_count(), "repeat": args.repeat, "rayfleet": ours, "baseline": base,
           "median": {"rayfleet": med, "baseline": ref}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
