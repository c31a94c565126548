"""Benchmark: scale a pool up by 2,000 nodes on simulated EC2 under its API rate limits, as one
cell against several cells in parallel (in one region, and each in its own region).

Each cell is what `fleet_cells` makes of one spec with `max_nodes_per_cell`, run by the production
reconcile pass (cluster/loop/reconcile.py) over its own SimulatedCloud, its share of the 2,000
nodes given as `rayfleet scale` gives it (cluster/decide/cell_targets.py). What the simulator adds
here is the EC2 API between each controller and its cloud, call by call, as the AWS provider
(cluster/providers/aws/provider.py) and the loop (cluster/loop/act.py) make the calls:
- every loop observes the fleet with DescribeInstances (a page per 1,000 instances);
- a loop's launches are made in its act, one after another, blocking the loop: DescribeInstances
  for the names (200 a call), then one RunInstances per instance (MinCount = MaxCount = 1);
- EC2 answers from token buckets per account and region (cluster/sim/ec2_api.py: AWS's
  documented sizes and refill rates); cells in one region share them, cells in several regions
  each have their own;
- a throttled call is retried as botocore's standard mode does (backoff with jitter, the retry
  quota, aws.api_max_attempts tries); a launch that gives up is a launch error the next plan
  reads, and the planner asks again (cluster/decide/retries.py).
Every cell's calls are made in one time order (a heap), so cells sharing a region's buckets
contend for them as their controllers would.

Measured, per scenario: when the last node was launched, and when half and all of the 2,000 nodes
were ready (joined Ray, checked, admitted), from the scale request; API calls and throttles; and
the lower bound each limit sets on the last launch (a region's RunInstances resource and request
buckets, a cell's loop: upscaling_speed nodes per loop_period_s, a cell's calls one after
another), the largest of which the scale-up should meet.

Figures not from a source, stated so they can be changed: boot to Ray-joined BOOT_S (+ up to
BOOT_JITTER_S), as bench/fleet_scale.py; CALL_S, the time one EC2 call takes (no published figure:
an assumption); no boot failures (this bench is about the API).

Prints a table and writes bench/results/scale_up.json.
    python bench/scale_up.py [--nodes 2000] [--cells 4,8] [--call-s 0.2]
"""
from __future__ import annotations

import argparse
import heapq
import json
import math
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from fleet_scale import BOOT_JITTER_S, BOOT_S  # noqa: E402
from rayfleet.cluster.decide.actions import Launch  # noqa: E402
from rayfleet.cluster.decide.cell_targets import CellPool, share_target  # noqa: E402
from rayfleet.cluster.decide.state import NodeState  # noqa: E402
from rayfleet.cluster.loop.reconcile import reconcile  # noqa: E402
from rayfleet.cluster.sim.ec2_api import (REQUEST_BUCKETS, RESOURCE_BUCKETS, BotocoreRetries,  # noqa: E402
                                          Ec2Region)
from rayfleet.cluster.sim.simulator import SimulatedCloud, SimulatedController  # noqa: E402
from rayfleet.cluster.spec.cells import fleet_cells  # noqa: E402
from rayfleet.cluster.spec.fleet import FleetSpec  # noqa: E402

NODES = 2_000
CELL_COUNTS = [4, 8]
CALL_S = 0.2            # one EC2 API call's round trip: an assumption (no published figure)
LOOP_PERIOD_S = 5.0     # manifests/examples/aws-fleet.yaml's scaling.loop_period_s
DESCRIBE_PAGE = 1000    # instances per DescribeInstances page
NAMES_PER_DESCRIBE = 200  # the AWS provider's FILTER_VALUES_MAX
MAX_ATTEMPTS = 5        # aws.api_max_attempts' default


def fleet_spec(nodes: int, cells: int, upscaling_speed: int | None) -> FleetSpec:
    """One pool of up to `nodes` 8-GPU EC2 nodes, at 0 before the scale-up; cut into `cells` cells."""
    data: dict[str, Any] = {
        "name": "scale", "provider": "aws", "aws": {"region": "us-east-1"},
        "pools": [{"name": "h100", "accelerator": "H100", "gpus_per_node": 8, "cpus_per_node": 192,
                   "memory": "2048Gi", "min_nodes": 0, "max_nodes": nodes, "nodes": 0,
                   "provider": {"aws": {"instance_type": "p5.48xlarge", "ami": "ami-0a1b2c3d4e5f60718"}}}],
        "scaling": {"loop_period_s": LOOP_PERIOD_S, "boot_timeout_s": 900,
                    **({"upscaling_speed": upscaling_speed} if upscaling_speed else {})}}
    if cells > 1:
        data["max_nodes_per_cell"] = -(-nodes // cells)
    return FleetSpec.model_validate(data)


class LaunchQueued(SimulatedController):
    """The production pass, with its launches left for the EC2 calls to make (non-launch actions
    are applied at once: they call Ray, not EC2)."""

    launching: list[Launch] = []

    def apply(self, actions: Sequence[object]) -> None:
        self.launching = [a for a in actions if isinstance(a, Launch)]
        self.cloud.apply([a for a in actions if not isinstance(a, Launch)])


class Call:
    """One EC2 call a cell's loop makes; `done(ok)` is told whether EC2 took it in the end."""

    def __init__(self, action: str, done: Callable[[bool], None], instances: int = 0) -> None:
        self.action, self.done, self.instances, self.attempt = action, done, instances, 1


class Cell:
    """One cell's controller and the EC2 calls its loop makes, one at a time (see the docstring)."""

    def __init__(self, name: str, spec: FleetSpec, target: int, region: Ec2Region, seed: int, call_s: float) -> None:
        cloud = SimulatedCloud(boot_s=BOOT_S, boot_jitter_s=BOOT_JITTER_S, seed=seed)
        self.name, self.target, self.region, self.call_s = name, target, region, call_s
        self.controller = LaunchQueued(spec, cloud, targets={"h100": target})
        self.retries = BotocoreRetries(MAX_ATTEMPTS, random.Random(seed))
        self.calls: list[Call] = []
        self.errors: dict[str, str] = {}
        self.loop_started = 0.0
        self.observed, self.planning = True, False
        self.last_launch_at: float | None = None

    def ready(self) -> int:
        return sum(1 for r in self.controller.state.nodes.values() if r.state is NodeState.READY and not r.spare)

    def step(self, now: float) -> float:
        """Do what is due at `now` (a call, the plan once observed, or a new loop); when to come back."""
        cloud = self.controller.cloud
        cloud.advance(max(0.0, now - cloud.now))
        if not self.calls:
            return self.plan_and_act(now) if self.planning else self.start_loop(now)
        call = self.calls[0]
        if self.region.call(call.action, now, call.instances):
            self.retries.succeeded(call.attempt - 1)
            self.calls.pop(0)
            call.done(True)
        elif self.retries.may_retry(call.attempt):
            call.attempt += 1
            return now + self.call_s + self.retries.backoff_s(call.attempt - 2)
        else:
            self.calls.pop(0)
            call.done(False)
        if self.calls or self.planning:
            return now + self.call_s
        return self.next_loop(now + self.call_s)

    def start_loop(self, now: float) -> float:
        """A loop begins: observe the fleet (its DescribeInstances pages), then plan."""
        self.loop_started, self.observed, self.planning = now, True, True
        pages = max(1, math.ceil(len(self.controller.cloud.instances()) / DESCRIBE_PAGE))
        self.calls = [Call("DescribeInstances", self.observe) for _ in range(pages)]
        return now

    def observe(self, ok: bool) -> None:
        self.observed = self.observed and ok

    def next_loop(self, now: float) -> float:
        return max(now, self.loop_started + LOOP_PERIOD_S)

    def plan_and_act(self, now: float) -> float:
        """Observed: the production pass; its launches become this loop's calls."""
        self.planning = False
        if not self.observed:  # the loop's observe failed: it logs and tries again next period
            return self.next_loop(now)
        errors, self.errors = self.errors, {}
        reconcile(self.controller, self.controller.cloud.view(errors), now)
        launches = self.controller.launching
        if not launches:
            return self.next_loop(now)
        described = [True]
        for _ in range(0, len(launches), NAMES_PER_DESCRIBE):
            self.calls.append(Call("DescribeInstances", lambda ok: described.__setitem__(0, described[0] and ok)))
        self.calls += [Call("RunInstances", self.launched(launch, described), instances=1) for launch in launches]
        return now

    def launched(self, launch: Launch, described: list[bool]) -> Callable[[bool], None]:
        """What a RunInstances call's outcome does: the instance exists, or the next plan reads a
        launch error (a failed describe of the batch fails the batch, as the provider's does)."""
        def done(ok: bool) -> None:
            if ok and described[0]:
                cloud = self.controller.cloud
                cloud.launch(self.controller.spec.pool(launch.pool), [launch.instance])
                self.last_launch_at = cloud.now
            else:
                self.errors[launch.instance] = "launch failed: RequestLimitExceeded"
        return done


def run_scenario(nodes: int, cells: int, regions: int, upscaling_speed: int | None, call_s: float,
                 seed: int = 1) -> dict[str, Any]:
    """Scale from 0 to `nodes` at t=0 across `cells` cells spread over `regions` regions."""
    spec = fleet_spec(nodes, cells, upscaling_speed)
    parts = fleet_cells(spec)
    shares = share_target(nodes, [CellPool(c.name or "one", 0, c.spec.pool("h100").max_nodes, 0) for c in parts])
    region_list = [Ec2Region(f"region-{i + 1}") for i in range(regions)]
    group = [Cell(part.name or "one", part.spec, share.nodes, region_list[i % regions], seed + i, call_s)
             for i, (part, share) in enumerate(zip(parts, shares))]
    started = time.perf_counter()
    heap = [(0.0, i) for i in range(len(group))]
    half_at = all_at = None
    total = sum(cell.target for cell in group)
    while heap:
        now, index = heapq.heappop(heap)
        later = group[index].step(now)
        ready = sum(c.ready() for c in group)
        if half_at is None and ready >= total / 2:
            half_at = now
        if ready >= total:
            all_at = now
            break
        if now > 24 * 3600:
            raise RuntimeError("no scale-up within a simulated day")
        heapq.heappush(heap, (later, index))
    last_launch = max(cell.last_launch_at or 0.0 for cell in group)
    speed = spec.scaling.upscaling_speed
    bounds = lower_bounds(nodes, cells, regions, speed, call_s)
    return {
        "cells": cells, "regions": regions, "nodes_per_cell": [cell.target for cell in group],
        "upscaling_speed": speed, "loop_period_s": LOOP_PERIOD_S, "call_s": call_s,
        "last_launch_s": round(last_launch, 1), "half_ready_s": round(half_at or 0.0, 1),
        "all_ready_s": round(all_at or math.inf, 1),
        "api": {region.name: {"calls": region.calls, "throttled": region.throttled} for region in region_list},
        "launch_bounds_s": bounds, "bound_by": max(bounds, key=bounds.get),
        "wall_s": round(time.perf_counter() - started, 1)}


def lower_bounds(nodes: int, cells: int, regions: int, speed: int, call_s: float) -> dict[str, float]:
    """The earliest the last of `nodes` launches can happen under each limit alone."""
    per_region, per_cell = math.ceil(nodes / regions), math.ceil(nodes / cells)
    run_size, run_rate = REQUEST_BUCKETS["RunInstances"]
    res_size, res_rate = RESOURCE_BUCKETS["RunInstances"]
    return {"resource bucket": round(max(0.0, (per_region - res_size) / res_rate), 1),
            "request bucket": round(max(0.0, (per_region - run_size) / run_rate), 1),
            "loop": round((math.ceil(per_cell / speed) - 1) * LOOP_PERIOD_S, 1),
            "calls": round(per_cell * call_s, 1)}


SCENARIOS = (  # (label, cells, regions, upscaling_speed: None = the spec's default)
    ("one cell, defaults", 1, 1, None),
    ("one cell, upscaling_speed 1000", 1, 1, 1000),
)


def run(nodes: int = NODES, cell_counts: Sequence[int] = CELL_COUNTS, call_s: float = CALL_S) -> dict[str, Any]:
    scenarios = list(SCENARIOS)
    for cells in cell_counts:
        scenarios += [(f"{cells} cells, one region", cells, 1, None), (f"{cells} cells, {cells} regions", cells, cells, None),
                      (f"{cells} cells, {cells} regions, upscaling_speed 1000", cells, cells, 1000)]
    rows = []
    for label, cells, regions, speed in scenarios:
        rows.append({"scenario": label, **run_scenario(nodes, cells, regions, speed, call_s)})
    return {"bench": "scale_up", "nodes": nodes, "boot_s": BOOT_S, "boot_jitter_s": BOOT_JITTER_S,
            "limits": {"request": REQUEST_BUCKETS, "resource": RESOURCE_BUCKETS,
                       "source": "https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-throttling.html"},
            "python": platform.python_version(), "rows": rows}


def print_table(results: dict[str, Any]) -> None:
    print(f"scale-up by {results['nodes']} nodes, from the request (simulated EC2, boot {results['boot_s']:.0f}"
          f"+{results['boot_jitter_s']:.0f} s)")
    print("| scenario | upscaling_speed | last launch | half ready | all ready | RunInstances calls / throttled "
          "| launch bound (by) |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for row in results["rows"]:
        calls = sum(r["calls"].get("RunInstances", 0) for r in row["api"].values())
        throttled = sum(r["throttled"].get("RunInstances", 0) for r in row["api"].values())
        bound = row["launch_bounds_s"][row["bound_by"]]
        print(f"| {row['scenario']} | {row['upscaling_speed']} | {row['last_launch_s']:.0f} s | {row['half_ready_s']:.0f} s "
              f"| {row['all_ready_s']:.0f} s | {calls} / {throttled} | {bound:.0f} s ({row['bound_by']}) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=NODES)
    parser.add_argument("--cells", default=",".join(map(str, CELL_COUNTS)))
    parser.add_argument("--call-s", type=float, default=CALL_S, help="one EC2 call's round trip (an assumption)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "scale_up.json"))
    args = parser.parse_args()
    results = run(args.nodes, [int(c) for c in args.cells.split(",") if c], args.call_s)
    print_table(results)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
