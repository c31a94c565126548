"""Benchmark: the production planner against simulated fleets of 100 to 12,500 nodes x 8 GPUs.

On one core (the process pins itself to one CPU), with the real `plan` over `SimulatedCloud`:
1. reconcile-loop time, p50 and p99 over consecutive 1 s loops, for each fleet size: observe (the
   ClusterView with demand), plan, act (applied to the cloud) and persist (the controller's
   FleetStore writing the records that changed, into an in-memory KV store that counts the bytes
   sent). Steady state: one job on the whole pool, autoscaling on, failures at Llama 3's
   published rates. Beside each loop, not counted in it, the baseline: the whole state as one
   JSON document, as the controller wrote it every loop before per-node records (`persist_full`,
   `bytes_full`);
2. 1% of the nodes failing at once: the loop that notices and plans their replacement (its wall
   time, and how long after the failure it runs in simulated time), the bytes each loop of the
   incident persists, and when the fleet is whole;
3. memory at the largest size: the planner's peak allocation in one pass (tracemalloc), the
   persisted state's size, the process's RSS;
4. goodput of a simulated week at 12,500 nodes, with and without hot spares: the share of the
   GPU-hours paid for that did training the job kept.

Prints a table and writes bench/results/fleet_scale.json.
    python bench/fleet_scale.py [--sizes 100,1000,12500] [--loops 100] [--days 7]
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rayfleet.cluster.decide.plan import plan  # noqa: E402
from rayfleet.cluster.rayio import gcs  # noqa: E402
from rayfleet.cluster.sim.kv import MemoryKV  # noqa: E402
from rayfleet.cluster.sim.simulator import (LLAMA3_NODE_HOURS, JobState, SimulatedCloud, SimulatedController,  # noqa: E402
                              SimulatedJob, llama3_rates)
from rayfleet.cluster.spec.fleet import FleetSpec  # noqa: E402
from rayfleet.cluster.decide.state import NodeState  # noqa: E402
from rayfleet.names import STATE_KEY  # noqa: E402

SIZES = [100, 250, 500, 1000, 2500, 5000, 10000, 12500]
GPUS_PER_NODE = 8
# Job and cloud figures the sources do not give; judgements, stated so they can be changed.
BOOT_S, BOOT_JITTER_S = 300.0, 60.0   # launch to Ray-joined for a GPU host (image, drivers, raylet)
BOOT_FAILURE = 0.01                   # launches that never join (no published rate found)
CHECKPOINT_S = 30.0                   # training pauses this long per checkpoint
RESTART_S = 120.0                     # from the gang placed to training again (start, NCCL, load)
SPARES = 16                           # hot spares for the week with spares


def fleet_spec(nodes: int, spares: int = 0, autoscale: bool = True) -> FleetSpec:
    return FleetSpec.model_validate({"name": "bench", "pools": [{
        "name": "h100", "accelerator": "H100", "gpus_per_node": GPUS_PER_NODE, "cpus_per_node": 192,
        "memory": "2048Gi", "min_nodes": 0, "max_nodes": nodes + nodes // 20 + spares + 16, "nodes": nodes,
        "hot_spares": spares, "autoscale": autoscale, "idle_timeout_s": 600}],
        # 1 s loops (the default); bring-up launches up to 1,000 nodes a loop so benchmarks start fast
        "scaling": {"loop_period_s": 1, "upscaling_speed": 1000, "boot_timeout_s": 900}})


def young_interval_s(nodes: int, checkpoint_s: float = CHECKPOINT_S) -> float:
    """Young's optimum checkpoint interval, sqrt(2 x checkpoint cost x MTBF) (J. W. Young, "A first
    order approximation to the optimum checkpoint interval", CACM 17(9), 1974), for a job on
    `nodes` hosts interrupted at Llama 3's total rate (419 per LLAMA3_NODE_HOURS host-hours)."""
    mtbf_s = 3600.0 / (419 / LLAMA3_NODE_HOURS * nodes)
    return math.sqrt(2 * checkpoint_s * mtbf_s)


def running_fleet(nodes: int, spares: int = 0, autoscale: bool = True, seed: int = 1) -> SimulatedController:
    """A fleet brought up and a job on every pool node, running."""
    cloud = SimulatedCloud(boot_s=BOOT_S, boot_jitter_s=BOOT_JITTER_S, seed=seed,
                           failures=llama3_rates(boot_failure=BOOT_FAILURE))
    controller = SimulatedController(fleet_spec(nodes, spares, autoscale), cloud)
    controller.run(2 * BOOT_S, fast=True)
    job = cloud.submit(SimulatedJob("train", "h100", nodes, checkpoint_every_s=young_interval_s(nodes),
                                    checkpoint_s=CHECKPOINT_S, restart_s=RESTART_S))
    while job.state is not JobState.RUNNING:
        controller.run(60, fast=True)
    return controller


def timed_loop(controller: SimulatedController) -> dict[str, float]:
    """One production loop, each step timed: observe, plan, act, persist. `cpu_*` is the
    thread's CPU time: what the loop costs one core even when other work shares the machine.
    `bytes`: what persist sent to the KV store (keys and values); `*_full`: the full-state write
    of the same state, the baseline, timed after the loop."""
    cloud = controller.cloud
    marks = [(time.perf_counter(), time.thread_time())]
    view = cloud.view()
    marks.append((time.perf_counter(), time.thread_time()))
    result = plan(controller.spec, controller.state, view, cloud.now, controller.targets)
    marks.append((time.perf_counter(), time.thread_time()))
    controller.state = result.state
    cloud.apply(result.actions)
    marks.append((time.perf_counter(), time.thread_time()))
    sent = controller.kv.tally.bytes
    controller.store.put_state(controller.state)
    marks.append((time.perf_counter(), time.thread_time()))
    controller.events.extend(result.events)
    out: dict[str, float] = {"actions": len(result.actions), "bytes": controller.kv.tally.bytes - sent}
    for index, step in enumerate(("observe", "plan", "act", "persist")):
        out[step] = marks[index + 1][0] - marks[index][0]
        out["cpu_" + step] = marks[index + 1][1] - marks[index][1]
    out["loop"], out["cpu_loop"] = marks[-1][0] - marks[0][0], marks[-1][1] - marks[0][1]
    out["persist_full"], out["bytes_full"] = full_write(controller)
    return out


def full_write(controller: SimulatedController) -> tuple[float, int]:
    """The baseline: the whole state as one JSON document under one key, into a KV store of its own."""
    kv = MemoryKV()
    started = time.perf_counter()
    gcs.kv_put(kv, STATE_KEY, controller.state.to_json())
    return time.perf_counter() - started, kv.tally.bytes


def byte_figures(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"mean": statistics.fmean(ordered), "p50": statistics.median(ordered),
            "p99": ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)], "max": ordered[-1]}


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
    return {"p50_ms": statistics.median(ordered) * 1000, "p99_ms": p99 * 1000, "max_ms": ordered[-1] * 1000}


def measure_size(nodes: int, loops: int) -> dict[str, Any]:
    controller = running_fleet(nodes)
    gc.collect()
    samples = []
    for _ in range(loops):
        samples.append(timed_loop(controller))
        controller.cloud.advance(controller.spec.scaling.loop_period_s)
    steady = {step: percentiles([s[step] for s in samples])
              for step in ("observe", "plan", "act", "persist", "loop", "cpu_plan", "cpu_loop", "persist_full")}
    steady["bytes"] = byte_figures([s["bytes"] for s in samples])
    steady["bytes_full"] = byte_figures([s["bytes_full"] for s in samples])
    steady["bytes_share_of_full"] = steady["bytes"]["mean"] / steady["bytes_full"]["mean"]
    incident = measure_incident(controller)
    return {"nodes": nodes, "gpus": nodes * GPUS_PER_NODE, "loops": loops, "steady": steady, "incident": incident}


def measure_incident(controller: SimulatedController) -> dict[str, Any]:
    """1% of the fleet's hosts fail at once, half a loop after the last loop: half host failures
    (the provider shows them gone), half GPU faults (HealthPolicy's check reports them 15 s later)."""
    cloud, period = controller.cloud, controller.spec.scaling.loop_period_s
    alive = sorted(name for name, node in cloud.nodes.items() if node.ray_alive)
    count = max(1, len(alive) // 100)
    victims = alive[:: len(alive) // count][:count]
    cloud.advance(period / 2)
    failed_at = cloud.now
    for number, name in enumerate(victims):
        cloud.inject("node" if number % 2 == 0 else "gpu", name)
    cloud.advance(period / 2)
    acting, planned_at, written = [], None, []
    while planned_at is None:
        sample = timed_loop(controller)
        written.append(sample)
        if sample["actions"]:
            acting.append((cloud.now, sample))
        records = controller.state.nodes
        if all(v not in records or records[v].state is NodeState.TERMINATING for v in victims):
            planned_at = cloud.now
        cloud.advance(period)
    target = sum(1 for r in controller.state.nodes.values() if r.state.counts_as_capacity and not r.spare)
    whole = None
    while whole is None and cloud.now - failed_at < 3600:
        controller.run(10, fast=True)
        if sum(1 for r in controller.state.nodes.values() if r.state is NodeState.READY and not r.spare) >= target:
            whole = cloud.now
    detected_at, first = acting[0]
    return {"failed_nodes": len(victims), "detect_after_s": detected_at - failed_at,
            "all_replacements_planned_after_s": planned_at - failed_at,
            "detect_loop_ms": first["loop"] * 1000, "detect_plan_ms": first["plan"] * 1000,
            "detect_loop_cpu_ms": first["cpu_loop"] * 1000,
            "detect_loop_actions": first["actions"],
            "acting_loops_max_ms": max(sample["loop"] for _, sample in acting) * 1000,
            "acting_loops_max_cpu_ms": max(sample["cpu_loop"] for _, sample in acting) * 1000,
            "fleet_whole_after_s": None if whole is None else whole - failed_at,
            # from the failure until every replacement is planned: what persist sent per loop
            "loops_until_planned": len(written),
            "bytes_per_loop_max": max(sample["bytes"] for sample in written),
            "bytes_until_planned": sum(sample["bytes"] for sample in written),
            "bytes_full": written[-1]["bytes_full"],
            "persist_ms_max": max(sample["persist"] for sample in written) * 1000,
            "persist_full_ms": written[-1]["persist_full"] * 1000}


def measure_memory(nodes: int) -> dict[str, Any]:
    controller = running_fleet(nodes)
    view = controller.cloud.view()
    gc.collect()
    tracemalloc.start()
    plan(controller.spec, controller.state, view, controller.cloud.now, controller.targets)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"nodes": nodes, "plan_peak_mib": peak / 2**20,
            "state_json_mib": len(controller.state.to_json()) / 2**20,
            "process_rss_mib": psutil.Process().memory_info().rss / 2**20}


def measure_goodput(nodes: int, spares: int, days: float, seed: int = 7) -> dict[str, Any]:
    started = time.perf_counter()
    controller = running_fleet(nodes, spares=spares, autoscale=False, seed=seed)
    cloud, job = controller.cloud, controller.cloud.jobs[0]
    paid_before, progress_before, lost_before = cloud.gpu_seconds, job.progress(cloud.now), job.lost_s
    start, interrupted = cloud.now, len(cloud.interruptions)
    controller.run(days * 86400, fast=True)
    paid = cloud.gpu_seconds - paid_before
    trained = job.progress(cloud.now) - progress_before
    wall = cloud.now - start
    kinds: dict[str, int] = {}
    for when, kind, _ in cloud.failure_log:
        if when >= start:
            kinds[kind] = kinds.get(kind, 0) + 1
    return {"nodes": nodes, "hot_spares": spares, "days": days,
            "goodput": trained * nodes * GPUS_PER_NODE / paid,
            "effective_training_time": trained / wall,
            "interruptions": len(cloud.interruptions) - interrupted, "failures": kinds,
            "lost_training_hours": (job.lost_s - lost_before) / 3600,
            "checkpoint_every_s": job.checkpoint_every_s, "loops_run": controller.ticks,
            "simulation_wall_s": time.perf_counter() - started}


def growth(curve: list[dict[str, Any]]) -> dict[str, float]:
    """How loop CPU time grows with the fleet: the least-squares slope b of log(loop) against
    log(nodes) over every size (loop ~ nodes^b; 1 = linear), and the per-node cost at both ends."""
    xs = [math.log(row["nodes"]) for row in curve]
    ys = [math.log(row["steady"]["cpu_loop"]["p50_ms"]) for row in curve]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    small, large = curve[0], curve[-1]
    return {"exponent": slope,
            "us_per_node_smallest": small["steady"]["cpu_loop"]["p50_ms"] * 1000 / small["nodes"],
            "us_per_node_largest": large["steady"]["cpu_loop"]["p50_ms"] * 1000 / large["nodes"]}


def print_table(results: dict[str, Any]) -> None:
    print("reconcile loop = observe + plan + act + persist; ms of one core's CPU (wall in brackets)")
    print(f"{'nodes':>7} {'GPUs':>7} {'loop p50':>16} {'loop p99':>16} {'plan p50':>9} {'plan p99':>9} "
          f"{'persist':>8} {'1% fail: loop':>16} {'planned':>8} {'whole':>7}")
    rows = []
    for row in results["curve"]:
        s, i = row["steady"], row["incident"]
        whole = f"{i['fleet_whole_after_s']:.0f}s" if i["fleet_whole_after_s"] is not None else "-"
        print(f"{row['nodes']:>7} {row['gpus']:>7} "
              f"{s['cpu_loop']['p50_ms']:>6.1f} ({s['loop']['p50_ms']:>6.1f}) "
              f"{s['cpu_loop']['p99_ms']:>6.1f} ({s['loop']['p99_ms']:>6.1f}) "
              f"{s['cpu_plan']['p50_ms']:>9.1f} {s['cpu_plan']['p99_ms']:>9.1f} {s['persist']['p50_ms']:>8.1f} "
              f"{i['detect_loop_cpu_ms']:>6.1f} ({i['detect_loop_ms']:>6.1f}) "
              f"{i['all_replacements_planned_after_s']:>7.1f}s {whole:>7}")
        rows.append(row)
    print("\nbytes persisted per loop (records that changed) against the full-state write of the same state;")
    print("persist ms p50 (wall): the changed records against the full write")
    print(f"{'nodes':>7} {'steady mean':>12} {'steady max':>11} {'full write':>11} {'share':>8} "
          f"{'1% fail: max':>13} {'loops':>6} {'persist':>8} {'full':>7}")
    for row in rows:
        s, i = row["steady"], row["incident"]
        print(f"{row['nodes']:>7} {s['bytes']['mean']:>12.0f} {s['bytes']['max']:>11.0f} "
              f"{s['bytes_full']['mean']:>11.0f} {s['bytes_share_of_full']:>8.2%} {i['bytes_per_loop_max']:>13.0f} "
              f"{i['loops_until_planned']:>6} {s['persist']['p50_ms']:>8.3f} {s['persist_full']['p50_ms']:>7.2f}")
    g = results["growth"]
    print(f"growth: loop ~ nodes^{g['exponent']:.2f} ({g['us_per_node_smallest']:.1f} -> "
          f"{g['us_per_node_largest']:.1f} us of CPU per node)")
    m = results["memory"]
    print(f"memory at {m['nodes']} nodes: plan peak {m['plan_peak_mib']:.1f} MiB, state {m['state_json_mib']:.1f} MiB "
          f"as JSON, process RSS {m['process_rss_mib']:.0f} MiB")
    for run in results["goodput"]:
        print(f"{run['days']:g} days at {run['nodes']} nodes, {run['hot_spares']} hot spares: goodput "
              f"{run['goodput']:.1%}, effective training time {run['effective_training_time']:.1%}, "
              f"{run['interruptions']} interruptions {run['failures']}, "
              f"{run['lost_training_hours']:.1f} h of training redone")


def pin_to_one_core() -> int:
    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    return core


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--loops", type=int, default=100, help="steady loops measured per size")
    parser.add_argument("--days", type=float, default=7.0, help="simulated days of the goodput runs")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "fleet_scale.json"))
    args = parser.parse_args()
    core = pin_to_one_core()
    sizes = [int(size) for size in args.sizes.split(",")]
    curve = []
    for nodes in sizes:
        curve.append(measure_size(nodes, args.loops))
        print(f"measured {nodes} nodes", file=sys.stderr, flush=True)
    results: dict[str, Any] = {
        "benchmark": "fleet_scale", "date": time.strftime("%Y-%m-%d"), "machine": platform.node(),
        "cpus": os.cpu_count(), "pinned_core": core, "python": platform.python_version(),
        "command": "python bench/fleet_scale.py " + " ".join(sys.argv[1:]),
        "assumptions": {"boot_s": BOOT_S, "boot_jitter_s": BOOT_JITTER_S, "boot_failure": BOOT_FAILURE,
                        "checkpoint_s": CHECKPOINT_S, "restart_s": RESTART_S, "loop_period_s": 1.0,
                        "failure_rates_per_node_hour": llama3_rates(BOOT_FAILURE).__dict__},
        "curve": curve, "growth": growth(curve), "memory": measure_memory(sizes[-1]),
        # Llama 3's scale (16,384 GPUs, ">90% effective training time" published) and the largest
        "goodput": [measure_goodput(nodes, spares, args.days)
                    for nodes in sorted({min(2048, sizes[-1]), sizes[-1]}) for spares in (0, SPARES)],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)


if __name__ == "__main__":
    main()
