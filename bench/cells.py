"""Benchmark: 100,000 GPUs (12,500 nodes of 8) as one cell against 5, 10, 25 and 50 cells, simulated.

Each cell is what `fleet_cells` makes of one fleet spec with `max_nodes_per_cell` (the one-cell row:
the same spec without it), brought up in its own SimulatedCloud with its own SimulatedController,
as each real cell is its own Ray cluster and controller. Jobs of JOB_NODES whole nodes fill
UTILIZATION of the fleet; the federation (cluster/decide/federation.py) places every one of them.
On one core (the process pins itself), for each cell count:
1. per-cell reconcile loop (observe, plan, act, persist, as bench/fleet_scale.py times it), p50 and
   p99 over every loop of every cell, in CPU time of one core (wall time beside it);
2. federation placement time per job: one `place` over every cell's view, for each job at start;
3. bytes persisted per loop: steady (the records that changed) against the full-state write of
   the same cell (the whole state as one JSON document, as the controller once wrote every loop),
   and during an incident: INCIDENT_SHARE of one cell's nodes lost at once (host failures), from
   the failure until every replacement is planned;
4. a lost cell: its head dies with fault tolerance off. The model of the time until every one of
   its jobs trains again elsewhere: the federation notices within FEDERATION_POLL_S, waits the
   policy's head_lost_wait_s for the head to come back, then decides every move (measured wall
   time); each moved job is then submitted to its new cell's simulation, where it starts on free
   nodes (or on nodes its pool launches first, BOOT_S later) and restarts from its checkpoint in
   RESTART_S (process start, NCCL, checkpoint load: the simulator's `restart_s`); training since the
   job's last checkpoint is redone. One cell has no other cell: its jobs wait for its head.

Ratios are against the one-cell row of the same run. Prints a table, writes bench/results/cells.json.
    python bench/cells.py [--cells 1,5,10,25,50] [--nodes 12500] [--loops 100] [--quick]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from fleet_scale import (BOOT_FAILURE, BOOT_JITTER_S, BOOT_S, CHECKPOINT_S, GPUS_PER_NODE, RESTART_S,  # noqa: E402
                         byte_figures, percentiles, pin_to_one_core, timed_loop, young_interval_s)
from rayfleet.cluster.decide.federation import FederationPolicy, JobAsk, decide_move, place, reserve  # noqa: E402
from rayfleet.cluster.decide.state import NodeState  # noqa: E402
from rayfleet.cluster.sim.cells import SimulatedCell  # noqa: E402
from rayfleet.cluster.sim.simulator import (JobState, SimulatedCloud, SimulatedController, SimulatedJob,  # noqa: E402
                                            llama3_rates)
from rayfleet.cluster.spec.cells import fleet_cells  # noqa: E402
from rayfleet.cluster.spec.fleet import FleetSpec  # noqa: E402

TOTAL_NODES = 12_500
CELL_COUNTS = [1, 5, 10, 25, 50]
# Judgements, stated so they can be changed: 400-GPU jobs filling 75% of the fleet, so that the
# four other cells of a five-cell fleet hold a lost cell's jobs on free nodes, with room to spare.
JOB_NODES = 50
UTILIZATION = 0.75
INCIDENT_SHARE = 0.05          # of one cell's nodes, lost at once
FEDERATION_POLL_S = 1.0        # how often the federation reads the cells' heads
POLICY = FederationPolicy()
TARGET_LOOP_P99_MS, TARGET_CELL_NODES, TARGET_BYTES_SHARE = 100.0, 2_500, 0.01  # issue 29's targets


def fleet_spec(total_nodes: int, cells: int) -> FleetSpec:
    """One pool of `total_nodes` 8-GPU nodes; with more than one cell, `max_nodes_per_cell` cuts it
    into `cells` even cells, each with fleet_scale's headroom for replacements (5% + 16)."""
    per_cell = total_nodes // cells
    ceiling = per_cell + per_cell // 20 + 16
    data: dict[str, Any] = {
        "name": "bench", "pools": [{
            "name": "h100", "accelerator": "H100", "gpus_per_node": GPUS_PER_NODE, "cpus_per_node": 192,
            "memory": "2048Gi", "min_nodes": 0, "max_nodes": ceiling * cells, "nodes": per_cell * cells,
            "autoscale": True, "idle_timeout_s": 600}],
        "scaling": {"loop_period_s": 1, "upscaling_speed": 1000, "boot_timeout_s": 900}}
    if cells > 1:
        data["max_nodes_per_cell"] = ceiling
    return FleetSpec.model_validate(data)


def ready_nodes(controller: SimulatedController) -> int:
    return sum(1 for r in controller.state.nodes.values() if r.state is NodeState.READY and not r.spare)


def bring_up(spec: FleetSpec, name: str, seed: int) -> SimulatedCell:
    """A cell brought up until every node its spec asks for is ready (boot failures replaced)."""
    cloud = SimulatedCloud(boot_s=BOOT_S, boot_jitter_s=BOOT_JITTER_S, seed=seed,
                           failures=llama3_rates(boot_failure=BOOT_FAILURE))
    controller = SimulatedController(spec, cloud)
    controller.run(2 * BOOT_S, fast=True)
    wanted = spec.pools[0].desired
    while ready_nodes(controller) < wanted and cloud.now < 4 * 3600:
        controller.run(60, fast=True)
    return SimulatedCell(name, controller)


def run_until(cells: list[SimulatedCell], done: Any, limit_s: float = 3600.0) -> None:
    """Advance every cell 10 simulated seconds at a time until `done()` or `limit_s` passed."""
    for _ in range(int(limit_s // 10)):
        if done():
            return
        for cell in cells:
            cell.controller.run(10, fast=True)


def ask(job: SimulatedJob) -> JobAsk:
    return JobAsk(job.name, job.pool, workers=job.nodes)


def new_job(name: str, nodes: int) -> SimulatedJob:
    return SimulatedJob(name, "h100", nodes, checkpoint_every_s=young_interval_s(nodes),
                        checkpoint_s=CHECKPOINT_S, restart_s=RESTART_S)


def place_jobs(cells: list[SimulatedCell], total_nodes: int, job_nodes: int) -> dict[str, Any]:
    """Place UTILIZATION of the fleet as jobs through the federation, timing each `place`; run the
    cells until every job trains."""
    by_name = {cell.name: cell for cell in cells}
    views = tuple(cell.view() for cell in cells)
    took, unplaced = [], 0
    for number in range(int(total_nodes * UTILIZATION) // job_nodes):
        job = new_job(f"job{number:04d}", job_nodes)
        started = time.perf_counter()
        placement = place(ask(job), views)
        took.append(time.perf_counter() - started)
        if placement.cell is None:
            unplaced += 1
            continue
        views = reserve(views, job.pool, placement)
        by_name[placement.cell].controller.cloud.submit(job)
    jobs = [job for cell in cells for job in cell.controller.cloud.jobs]
    run_until(cells, lambda: all(job.state is JobState.RUNNING for job in jobs))
    ordered = sorted(took)
    return {"jobs": len(jobs), "unplaced": unplaced, "running": sum(j.state is JobState.RUNNING for j in jobs),
            "per_job_us": {"p50": statistics.median(ordered) * 1e6,
                           "p99": ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)] * 1e6,
                           "max": ordered[-1] * 1e6}}


def steady(cells: list[SimulatedCell], loops: int) -> dict[str, Any]:
    """`loops` timed loops of every cell, 1 s of simulated time apart."""
    samples = []
    for _ in range(loops):
        for cell in cells:
            samples.append(timed_loop(cell.controller))
            cell.controller.cloud.advance(cell.controller.spec.scaling.loop_period_s)
    out: dict[str, Any] = {step: percentiles([s[step] for s in samples])
                           for step in ("loop", "cpu_loop", "cpu_plan", "persist")}
    out["samples"] = len(samples)
    out["bytes"] = byte_figures([s["bytes"] for s in samples])
    out["bytes_full"] = byte_figures([s["bytes_full"] for s in samples])
    out["bytes_share_of_full"] = out["bytes"]["mean"] / out["bytes_full"]["mean"]
    return out


def incident(cell: SimulatedCell, share: float) -> dict[str, Any]:
    """`share` of the cell's nodes die at once, half a loop after its last loop; its loops from then
    until every dead node's replacement is planned."""
    controller = cell.controller
    cloud, period = controller.cloud, controller.spec.scaling.loop_period_s
    alive = sorted(name for name, node in cloud.nodes.items() if node.ray_alive)
    count = max(1, round(len(alive) * share))
    victims = alive[:: max(1, len(alive) // count)][:count]
    cloud.advance(period / 2)
    for name in victims:
        cloud.inject("node", name)
    cloud.advance(period / 2)
    written = []
    while len(written) < 600:
        written.append(timed_loop(controller))
        records = controller.state.nodes
        cloud.advance(period)
        if all(v not in records or records[v].state is NodeState.TERMINATING for v in victims):
            break
    return {"failed_nodes": len(victims), "loops_until_planned": len(written),
            "bytes_per_loop_max": max(s["bytes"] for s in written),
            "bytes_until_planned": sum(s["bytes"] for s in written),
            "bytes_full": written[-1]["bytes_full"],
            "loop_cpu_ms_max": max(s["cpu_loop"] for s in written) * 1000}


def lose_cell(cells: list[SimulatedCell]) -> dict[str, Any] | None:
    """The first cell's head dies (fault tolerance off); its jobs move as the federation decides."""
    if len(cells) < 2:
        return None
    lost, survivors = cells[0], cells[1:]
    cloud = lost.controller.cloud
    moving = [job for job in cloud.jobs if job.state is not JobState.DONE]
    lost.lose_head(cloud.now)
    decide_at = cloud.now + FEDERATION_POLL_S + POLICY.head_lost_wait_s
    views = tuple(cell.view() for cell in cells)
    early = decide_move(ask(moving[0]), lost.name, views, POLICY, decide_at - FEDERATION_POLL_S - 1e-3)
    assert not early.leaves, "the federation must wait the policy's time for the head"
    by_name = {cell.name: cell for cell in survivors}
    started, moved, nowhere = time.perf_counter(), [], 0
    for job in moving:
        decision = decide_move(ask(job), lost.name, views, POLICY, decide_at)
        placement = decision.placement
        if placement is None or placement.cell is None:
            nowhere += 1
            continue
        views = reserve(views, job.pool, placement)
        moved.append((by_name[placement.cell], new_job(job.name, job.nodes), placement.grow_by))
    decide_s = time.perf_counter() - started
    submitted = {}
    for cell, job, _ in moved:
        submitted[job.name] = cell.controller.cloud.now
        cell.controller.cloud.submit(job)
    targets = sorted({cell.name for cell, _, _ in moved})
    run_until([by_name[name] for name in targets], lambda: all(j.state is JobState.RUNNING for _, j, _ in moved))
    restart = [job.since - submitted[job.name] for _, job, _ in moved if job.state is JobState.RUNNING]
    all_running = len(restart) == len(moving)
    restart_s = max(restart) if restart else None
    return {"jobs": len(moving), "moved": len(moved), "no_cell": nowhere, "target_cells": len(targets),
            "jobs_launching_nodes_first": sum(1 for _, _, grow in moved if grow),
            "notice_and_wait_s": FEDERATION_POLL_S + POLICY.head_lost_wait_s,
            "decide_all_moves_ms": decide_s * 1000,
            "restart_after_placement_s_max": restart_s,
            "every_job_runs_again_after_s": (FEDERATION_POLL_S + POLICY.head_lost_wait_s + decide_s + restart_s)
            if all_running and restart_s is not None else None}


def measure(total_nodes: int, cell_count: int, loops: int, job_nodes: int) -> dict[str, Any]:
    started = time.perf_counter()
    spec = fleet_spec(total_nodes, cell_count)
    cells = [bring_up(cell.spec, cell.name or spec.name, seed=1 + index)
             for index, cell in enumerate(fleet_cells(spec))]
    assert len(cells) == cell_count
    bring_up_s = time.perf_counter() - started
    placed = place_jobs(cells, total_nodes, job_nodes)
    per_cell_loops = max(loops // cell_count, 20)
    row: dict[str, Any] = {
        "cells": cell_count, "nodes_per_cell": total_nodes // cell_count,
        "gpus_per_cell": total_nodes // cell_count * GPUS_PER_NODE,
        "cell_fleet_names": [cell.controller.spec.name for cell in cells[:3]],
        "bring_up_wall_s": bring_up_s, "placement": placed,
        "steady": steady(cells, per_cell_loops),
        "lost_cell": lose_cell(cells),
        "incident": incident(cells[-1], INCIDENT_SHARE),  # after the move: its failures do not shrink the room
    }
    row["wall_s"] = time.perf_counter() - started
    return row


def add_ratios_and_targets(rows: list[dict[str, Any]]) -> None:
    one = next((row for row in rows if row["cells"] == 1), None)
    for row in rows:
        s = row["steady"]
        row["targets"] = {
            "loop_p99_under_100ms": s["cpu_loop"]["p99_ms"] < TARGET_LOOP_P99_MS
            if row["nodes_per_cell"] <= TARGET_CELL_NODES else None,
            "steady_bytes_under_1pct_of_full": s["bytes_share_of_full"] < TARGET_BYTES_SHARE}
        if one is None:
            continue
        o = one["steady"]
        row["vs_one_cell"] = {
            "loop_cpu_p99": s["cpu_loop"]["p99_ms"] / o["cpu_loop"]["p99_ms"],
            "loop_cpu_p50": s["cpu_loop"]["p50_ms"] / o["cpu_loop"]["p50_ms"],
            "placement_per_job_p50": row["placement"]["per_job_us"]["p50"] / one["placement"]["per_job_us"]["p50"],
            "full_write_bytes": s["bytes_full"]["mean"] / o["bytes_full"]["mean"],
            "incident_bytes_per_loop_max": row["incident"]["bytes_per_loop_max"]
            / max(1, one["incident"]["bytes_per_loop_max"])}


def print_table(results: dict[str, Any]) -> None:
    rows = results["rows"]
    print(f"{results['nodes']} nodes ({results['nodes'] * GPUS_PER_NODE} GPUs); per-cell loop in ms of one core's "
          "CPU; ratios (x) against the one-cell row of this run")
    print(f"{'cells':>5} {'nodes/cell':>10} {'loop p50':>9} {'loop p99':>9} {'x1 p99':>7} {'place us':>9} "
          f"{'steady B':>9} {'full B':>10} {'share':>7} {'5% lost: B/loop max':>20} {'loops':>6} "
          f"{'lost cell: all run':>19}")
    for row in rows:
        s, i, lost = row["steady"], row["incident"], row["lost_cell"]
        ratio = row.get("vs_one_cell", {}).get("loop_cpu_p99")
        after = lost and lost["every_job_runs_again_after_s"]
        print(f"{row['cells']:>5} {row['nodes_per_cell']:>10} {s['cpu_loop']['p50_ms']:>9.1f} "
              f"{s['cpu_loop']['p99_ms']:>9.1f} {ratio if ratio is not None else float('nan'):>7.2f} "
              f"{row['placement']['per_job_us']['p50']:>9.1f} {s['bytes']['mean']:>9.0f} "
              f"{s['bytes_full']['mean']:>10.0f} {s['bytes_share_of_full']:>7.2%} {i['bytes_per_loop_max']:>20.0f} "
              f"{i['loops_until_planned']:>6} {(f'{after:.1f}s' if after else '-'):>19}")
    print("lost cell: notice + policy wait "
          f"{FEDERATION_POLL_S + POLICY.head_lost_wait_s:.0f}s + decisions + restart from checkpoint "
          f"({RESTART_S:.0f}s, more where a pool launches nodes first); one cell: its jobs wait for its head")
    for row in rows:
        target = row["targets"]["loop_p99_under_100ms"]
        if target is not None and row["nodes_per_cell"] == TARGET_CELL_NODES:
            print(f"target: loop p99 < {TARGET_LOOP_P99_MS:.0f} ms at {TARGET_CELL_NODES} nodes per cell: "
                  f"{'met' if target else 'missed'} ({row['steady']['cpu_loop']['p99_ms']:.1f} ms)")
    met = all(row["targets"]["steady_bytes_under_1pct_of_full"] for row in rows)
    print(f"target: steady bytes per loop < 1% of the full-state write: {'met' if met else 'missed'} in every row")


def run(total_nodes: int, cell_counts: list[int], loops: int, job_nodes: int = JOB_NODES) -> dict[str, Any]:
    """The benchmark's core: every cell count, measured; what main writes and prints."""
    rows = []
    for count in cell_counts:
        rows.append(measure(total_nodes, count, loops, job_nodes))
        print(f"measured {count} cells ({rows[-1]['wall_s']:.0f} s)", file=sys.stderr, flush=True)
    add_ratios_and_targets(rows)
    return {"benchmark": "cells", "date": time.strftime("%Y-%m-%d"), "machine": platform.node(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "nodes": total_nodes,
            "assumptions": {"job_nodes": job_nodes, "utilization": UTILIZATION, "incident_share": INCIDENT_SHARE,
                            "federation_poll_s": FEDERATION_POLL_S, "head_lost_wait_s": POLICY.head_lost_wait_s,
                            "boot_s": BOOT_S, "boot_jitter_s": BOOT_JITTER_S, "boot_failure": BOOT_FAILURE,
                            "restart_s": RESTART_S, "checkpoint_s": CHECKPOINT_S, "loop_period_s": 1.0},
            "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", default=",".join(map(str, CELL_COUNTS)))
    parser.add_argument("--nodes", type=int, default=TOTAL_NODES)
    parser.add_argument("--loops", type=int, default=100, help="timed loops per cell count (at least 20 per cell)")
    parser.add_argument("--quick", action="store_true",
                        help="1,000 nodes as 1, 5 and 10 cells, jobs of 10 nodes; 40 loops")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "cells.json"))
    args = parser.parse_args()
    core = pin_to_one_core()
    job_nodes = JOB_NODES
    if args.quick:
        args.nodes, args.cells, args.loops, job_nodes = 1000, "1,5,10", 40, 10
    results = run(args.nodes, [int(c) for c in args.cells.split(",")], args.loops, job_nodes)
    results["pinned_core"] = core
    results["command"] = "python bench/cells.py " + " ".join(sys.argv[1:])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)


if __name__ == "__main__":
    main()
