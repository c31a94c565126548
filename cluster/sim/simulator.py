"""A simulated cloud and Ray cluster: deterministic clock and seed, launch latency, failures, jobs.

It implements the provider interface and produces ClusterViews (nodes, instances, pending demand,
busy nodes), so the production `plan` runs against it unchanged: unit tests drive it step by
step, and the fleet-scale benchmark drives 12,500 nodes through it. Time only moves in `advance`,
which processes the world's events in time order (a heap), so the result does not depend on how
time is cut into steps: `SimulatedController.run(fast=True)` skips quiet stretches and ends in
the same state as stepping every loop period.

Failures follow `FailureRates` (per node-hour, from published fleets: see `llama3_rates`); a
`SimulatedJob` is a gang of whole nodes that trains, checkpoints, and on every interruption loses
what it trained since its last checkpoint, which is what goodput measures.
"""
from __future__ import annotations

import dataclasses
import heapq
import math
import random
from dataclasses import dataclass, field
from enum import Enum
from typing import Mapping, Sequence

from rayfleet.cluster.decide.autoscale import autoscales, idle_timeout_s, node_shape
from rayfleet.cluster.decide.demand import Bundle, Demand, Gang, LabelConstraint, NodeUsage, Selector, resources
from rayfleet.cluster.health.report import Check, HealthReport
from rayfleet.cluster.decide.plan import (MAX_BACKOFF_S, RELAUNCH_AFTER_S, TERMINATE_RETRY_S, Admit, Drain, Launch, Plan,
                          QuarantineRequests, RunChecks, Terminate, Unadmit, plan)
from rayfleet.cluster.spec.fleet import FleetSpec, PoolSpec
from rayfleet.cluster.decide.state import FleetState, NodeState
from rayfleet.cluster.decide.usage import gpu_hours
from rayfleet.cluster.loop.reconcile import UsageMeter, reconcile
from rayfleet.cluster.loop.store import FleetStore
from rayfleet.cluster.sim.kv import MemoryKV
from rayfleet.cluster.decide.view import ClusterView, Instance, InstanceStatus, Probe, RayNode
from rayfleet.names import INSTANCE_LABEL, POOL_LABEL

HOUR = 3600.0
TICK = 1e-3
"""Past a strict deadline (`>`), and past Ray's whole milliseconds of idle time."""


@dataclass(frozen=True)
class FailureRates:
    """How often things break, per node-hour (a node = one 8-GPU host)."""

    gpu_fault: float = 0.0          # a GPU fails (XID, HBM ECC, ...): the host is up, its GPU is not
    node_death: float = 0.0         # the host or its network goes (PSU, NIC, switch, unplanned maintenance)
    software: float = 0.0           # per node-hour of a running job: the job crashes, nodes are fine
    spot_preemption: float = 0.0    # the cloud reclaims the instance after a notice
    boot_failure: float = 0.0       # share of launches that never join Ray
    gpu_fault_detect_s: float = 15.0  # HealthPolicy defaults: check_interval_s 5 + confirm_window_s 10
    spot_notice_s: float = 120.0    # EC2's two-minute spot interruption notice

    @property
    def per_node_hour(self) -> float:
        return self.gpu_fault + self.node_death + self.spot_preemption


LLAMA3_NODE_HOURS = 2048 * 54 * 24
"""Llama 3 405B pre-training: 16,384 H100s (2,048 hosts of 8) over a 54-day snapshot
(Llama Team, "The Llama 3 Herd of Models", 2024, section 3.3.4 and Table 5)."""


def llama3_rates(boot_failure: float = 0.01) -> FailureRates:
    """Failure rates from the 419 unexpected interruptions of Llama 3's Table 5, by cause:
    - GPU (268): faulty GPU 148, HBM3 72, SRAM 19, GPU system processor 17, silent data
      corruption 6, thermal interface and sensor 6;
    - host and network (88): network switch/cable 35, unplanned host maintenance 32, NIC 7,
      SSD 3, power supply 3, chassis 2, IO expansion board 2, CPU 2, system memory 2;
    - software (63): software bug 54, NCCL watchdog timeouts 7, dependency 2.
    About 1.6e-4 interruptions per host-hour: at 12,500 hosts (100,000 GPUs) about two an hour.
    Boot failures are not in the paper, and we found no published per-launch rate: the 1% default
    is a judgement (a launched host that never passes its first health check); pass another."""
    return FailureRates(gpu_fault=268 / LLAMA3_NODE_HOURS, node_death=88 / LLAMA3_NODE_HOURS,
                        software=63 / LLAMA3_NODE_HOURS, boot_failure=boot_failure)


def spot_rate(monthly_share: float = 0.05) -> float:
    """Spot reclaims per node-hour from the AWS Spot Instance Advisor's "frequency of
    interruption" (share of instances reclaimed over a month; its lowest bucket is "<5%")."""
    return monthly_share / (730.0)  # hours in an average month


class JobState(str, Enum):
    PENDING = "pending"          # waiting for its gang: Ray shows it as a pending placement group
    RESTARTING = "restarting"    # placed; processes start and load the last checkpoint
    RUNNING = "running"          # training; checkpoints every `checkpoint_every_s` of training
    DONE = "done"


@dataclass
class SimulatedJob:
    """A synchronous training job on `nodes` whole nodes of `pool` (one worker per node)."""

    name: str
    pool: str
    nodes: int
    work_s: float = math.inf            # training seconds until done
    checkpoint_every_s: float = 1800.0  # training seconds between checkpoints
    checkpoint_s: float = 0.0           # training pauses this long to write one
    restart_s: float = 120.0            # from placement to training again
    state: JobState = JobState.PENDING
    since: float = 0.0
    placed: tuple[str, ...] = ()
    committed_s: float = 0.0            # training seconds the last checkpoint holds
    lost_s: float = 0.0                 # training seconds redone after interruptions
    interruptions: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    epoch: int = 0                      # bumps on every transition; stale scheduled events are ignored

    def trained(self, now: float) -> tuple[float, float]:
        """(saved by checkpoints since running, trained since the last checkpoint)."""
        if self.state is not JobState.RUNNING:
            return 0.0, 0.0
        cycle = self.checkpoint_every_s + self.checkpoint_s
        cycles = math.floor((now - self.since) / cycle)
        return cycles * self.checkpoint_every_s, min(now - self.since - cycles * cycle, self.checkpoint_every_s)

    def progress(self, now: float) -> float:
        saved, unsaved = self.trained(now)
        return self.committed_s + saved + unsaved

    def finish_at(self) -> float:
        left = self.work_s - self.committed_s
        if math.isinf(left):
            return math.inf
        full = max(0, math.ceil(left / self.checkpoint_every_s) - 1)
        return self.since + full * (self.checkpoint_every_s + self.checkpoint_s) + left - full * self.checkpoint_every_s


@dataclass
class SimulatedNode:
    name: str
    pool: str
    launched_at: float
    ready_at: float                 # when its raylet registers with Ray
    status: InstanceStatus = InstanceStatus.PENDING
    node_id: str | None = None
    ray_alive: bool = False
    detail: str = ""
    draining: bool = False
    gpus: int = 0
    job: str | None = None          # the job whose worker it runs
    idle_since: float = 0.0
    gpu_fault: bool = False
    hung: bool = False                                   # silent agent, raylet health check unanswered
    failing: tuple[Check, ...] = ()                      # checks its agent reports as failing
    admitted: bool = False
    notice_deadline: float | None = None


@dataclass
class SimulatedCloud:
    """Provider + Ray in one deterministic model."""

    now: float = 0.0
    boot_s: float = 10.0             # launch to Ray-joined
    boot_jitter_s: float = 0.0
    boot_failure_rate: float = 0.0   # share of launches that never come up
    seed: int = 0
    failures: FailureRates = FailureRates()
    pools: Mapping[str, PoolSpec] = field(default_factory=dict)  # node shapes (GPUs, CPUs) by pool
    nodes: dict[str, SimulatedNode] = field(default_factory=dict)
    jobs: list[SimulatedJob] = field(default_factory=list)
    reports: dict[str, HealthReport] = field(default_factory=dict)
    launches: int = 0                # provider launch calls that created a machine
    joins: int = 0                   # Ray nodes registered (also numbers their node ids)
    failure_log: list[tuple[float, str, str]] = field(default_factory=list)  # (time, kind, node or job)
    interruptions: list[tuple[float, str, str]] = field(default_factory=list)  # (time, job, why)
    gpu_seconds: float = 0.0         # GPU-seconds of every machine that existed (what is paid for)
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self._faults = random.Random(self.seed + 1)  # own stream: failures do not shift boot jitter
        self._events: list[tuple[float, int, str, str, int]] = []
        self._sequence = 0
        self._gpus = sum(node.gpus for node in self.nodes.values())
        self._instances: dict[str, Instance] = {}
        self._rays: dict[str, RayNode] = {}
        self._free: dict[str, set[str]] = {}  # pool -> nodes a job could be placed on now
        self._busy: dict[str, NodeUsage] = {}  # cached: a busy node's usage does not change
        self._shapes: dict[str, tuple[tuple[str, float], ...]] = {}
        self._failure_cap: float | None = None
        if not self.boot_failure_rate and self.failures.boot_failure:
            self.boot_failure_rate = self.failures.boot_failure

    # --- the provider interface ---------------------------------------------------------------
    def launch(self, pool: PoolSpec, names: Sequence[str]) -> list[Instance]:
        pool = self.pools.get(pool.name, pool)
        for name in names:
            if name in self.nodes and self.nodes[name].status is not InstanceStatus.TERMINATED:
                continue  # idempotent: the name is a client token
            jitter = self.rng.uniform(0, self.boot_jitter_s) if self.boot_jitter_s else 0.0
            node = SimulatedNode(name, pool.name, self.now, self.now + self.boot_s + jitter, gpus=pool.gpus_per_node)
            if self.boot_failure_rate and self.rng.random() < self.boot_failure_rate:
                node.ready_at = math.inf
            self._drop(name)
            self.nodes[name] = node
            self._gpus += node.gpus
            self.launches += 1
            self._at(self.now + 1.0, "up", name)
            if not math.isinf(node.ready_at):
                self._at(max(node.ready_at, self.now + 1.0), "join", name)
            self._refresh(node)
        return [self._instances[name] for name in names]

    def terminate(self, names: Sequence[str], wait: bool = False) -> None:
        for name in names:
            node = self.nodes.get(name)
            self.reports.pop(name, None)
            if node is not None:
                self._release(node, "terminated")
                self._drop(name)

    def instances(self) -> list[Instance]:
        return list(self._instances.values())

    # --- Ray's side ---------------------------------------------------------------------------
    def ray_nodes(self) -> tuple[RayNode, ...]:
        return tuple(self._rays.values())

    def demand(self) -> Demand:
        """Pending gangs of waiting jobs, and every live node's usage, as Ray would report them."""
        gangs = tuple(self._gang(job) for job in self.jobs if job.state is JobState.PENDING)
        usage: dict[str, NodeUsage] = {}
        for node in self.nodes.values():
            if node.node_id is None or not node.ray_alive:
                continue
            if node.job is not None:
                usage[node.node_id] = self._busy.get(node.node_id) or self._busy.setdefault(
                    node.node_id, NodeUsage(node.node_id, busy=True, idle_ms=0))
            else:
                usage[node.node_id] = NodeUsage(node.node_id, busy=False,
                                                idle_ms=int((self.now - node.idle_since) * 1000),
                                                available=self._shape(node.pool))
        return Demand(gangs=gangs, nodes=usage)

    def view(self, launch_errors: Mapping[str, str] | None = None) -> ClusterView:
        demand = self.demand()
        return ClusterView(ray_nodes=self.ray_nodes(), instances=tuple(self._instances.values()),
                           launch_errors=dict(launch_errors or {}), busy_nodes=demand.busy_nodes, demand=demand,
                           health=self.reports, probes=self.probes())

    def free_nodes(self, pool: str) -> int:
        """Nodes of `pool` a job could be placed on now: joined, admitted, idle, not draining."""
        return len(self._free.get(pool, ()))

    def probes(self) -> dict[str, Probe]:
        """What the raylet health check of each joined node answers (the controller probes them)."""
        return {node.name: Probe.HUNG if node.hung else Probe.OK if node.ray_alive else Probe.GONE
                for node in self.nodes.values() if node.node_id is not None}

    # --- the world moving ---------------------------------------------------------------------
    def advance(self, seconds: float) -> None:
        """Move the clock, processing every event due on the way in time order; then every joined
        node's agent reports, unless hung (the planner only looks at the end of an advance)."""
        end = self.now + seconds
        self._start_failures()
        while self._events and self._events[0][0] <= end:
            when, _, kind, target, epoch = heapq.heappop(self._events)
            self._clock(when)
            self._handle(kind, target, epoch)
            self._place_jobs()
        self._clock(end)
        for node in self.nodes.values():
            if node.ray_alive and not node.hung:
                self.reports[node.name] = HealthReport(node.name, node.node_id or "", self.now, node.failing,
                                                       received_at=self.now, notice_deadline=node.notice_deadline,
                                                       notice_reason="simulated notice" if node.notice_deadline else "")

    def next_event_at(self) -> float:
        self._start_failures()
        return self._events[0][0] if self._events else math.inf

    def kill(self, name: str, detail: str = "killed") -> None:
        """The machine dies: the provider reports it terminated, Ray loses it."""
        node = self.nodes[name]
        self._release(node, detail)
        node.status = InstanceStatus.TERMINATED
        node.ray_alive = False
        node.detail = detail
        self._refresh(node)

    def kill_raylet(self, name: str, detail: str = "") -> None:
        """Ray loses the node but the machine stays up (a hung or crashed raylet)."""
        node = self.nodes[name]
        self._release(node, detail or "raylet died")
        node.ray_alive = False
        node.detail = detail
        self._refresh(node)

    def hang(self, name: str, hung: bool = True) -> None:
        """The node stops answering (agent silent, raylet health check times out) or comes back."""
        self.nodes[name].hung = hung
        self._refresh(self.nodes[name])

    def notice(self, name: str, deadline: float) -> None:
        """The provider announces the node goes away at `deadline` (a spot interruption)."""
        self.nodes[name].notice_deadline = deadline

    def fail_check(self, name: str, check: Check | None) -> None:
        """Its agent reports this failing check from now on (None: healthy again)."""
        self.nodes[name].failing = (check,) if check else ()

    def apply(self, actions: Sequence[object]) -> None:
        for action in actions:
            if isinstance(action, Drain) and action.instance in self.nodes:
                self.nodes[action.instance].draining = True
                self._refresh(self.nodes[action.instance])
            if isinstance(action, Admit) and action.instance in self.nodes:
                self.nodes[action.instance].admitted = True
                self._refresh(self.nodes[action.instance])
            if isinstance(action, Unadmit) and action.instance in self.nodes:
                self.nodes[action.instance].admitted = False
                self._refresh(self.nodes[action.instance])
            if isinstance(action, RunChecks) and action.instance in self.nodes:
                node = self.nodes[action.instance]
                self.reports[node.name] = HealthReport(node.name, node.node_id or "", self.now, node.failing,
                                                       received_at=self.now)
        self.terminate([a.instance for a in actions if isinstance(a, Terminate)])
        for action in actions:
            if isinstance(action, Launch):
                self.launch(self.pools.get(action.pool) or PoolSpec(name=action.pool), [action.instance])
        self._place_jobs()

    def submit(self, job: SimulatedJob) -> SimulatedJob:
        job.since = self.now
        self.jobs.append(job)
        self._place_jobs()
        return job

    # --- events -------------------------------------------------------------------------------
    def _at(self, when: float, kind: str, target: str, epoch: int = 0) -> None:
        self._sequence += 1
        heapq.heappush(self._events, (when, self._sequence, kind, target, epoch))

    def _clock(self, when: float) -> None:
        self.gpu_seconds += self._gpus * (when - self.now)
        self.now = when

    def _handle(self, kind: str, target: str, epoch: int) -> None:
        if kind == "failure":
            self._candidate_failure()
            return
        if kind == "job":
            self._job_event(target, epoch)
            return
        node = self.nodes.get(target)
        if node is None:
            return  # terminated since this was scheduled
        if kind == "up" and node.status is InstanceStatus.PENDING:
            node.status = InstanceStatus.RUNNING
        elif kind == "join" and node.status is InstanceStatus.RUNNING and node.node_id is None:
            self.joins += 1
            node.node_id = f"{self.joins:056x}"
            node.ray_alive, node.idle_since = True, self.now
        elif kind == "detect" and node.ray_alive:
            self.kill_raylet(target, "health check: GPU fault")
        elif kind == "reclaim" and node.status is not InstanceStatus.TERMINATED:
            self.kill(target, "spot interruption")
        self._refresh(node)

    def _start_failures(self) -> None:
        """Failures are a Poisson process whose rate follows the fleet (alive nodes, running
        jobs). Drawn by thinning (Lewis and Shedler, 1979): candidates at a fixed upper rate,
        each kept with probability rate-now / upper rate. Candidates never depend on the fleet,
        so how time is stepped cannot change which failures happen."""
        if self._failure_cap is not None:
            return
        nodes = sum(pool.max_nodes + pool.hot_spares for pool in self.pools.values()) or len(self.nodes)
        self._failure_cap = (self.failures.per_node_hour + self.failures.software) * nodes / HOUR
        if self._failure_cap > 0:
            self._at(self.now + self._faults.expovariate(self._failure_cap), "failure", "")

    def _candidate_failure(self) -> None:
        assert self._failure_cap
        self._at(self.now + self._faults.expovariate(self._failure_cap), "failure", "")
        alive = sorted(name for name, node in self.nodes.items() if node.ray_alive)
        running = [job for job in self.jobs if job.state is JobState.RUNNING]
        rates = self.failures
        weights = [rates.gpu_fault * len(alive), rates.node_death * len(alive),
                   rates.spot_preemption * len(alive), rates.software * sum(job.nodes for job in running)]
        keep = self._faults.random() < sum(weights) / HOUR / self._failure_cap
        if not keep:
            return
        kind = self._faults.choices(("gpu", "node", "spot", "software"), weights)[0]
        if kind == "software":
            job = self._faults.choice(running)
            self.failure_log.append((self.now, kind, job.name))
            self._interrupt(job, "software failure")
            return
        self.inject(kind, self._faults.choice(alive))

    def inject(self, kind: str, name: str) -> None:
        """Node `name` fails now: "gpu" (its job stops; the health check takes the node out of
        Ray after `gpu_fault_detect_s`), "node" (the host is gone) or "spot" (reclaimed after the
        notice; Ray drains it meanwhile). The failure process calls this; so can a test."""
        node = self.nodes[name]
        self.failure_log.append((self.now, kind, name))
        if kind == "gpu":
            node.gpu_fault = True
            self._release(node, "GPU fault")
            self._at(self.now + self.failures.gpu_fault_detect_s, "detect", name)
        elif kind == "node":
            self.kill(name, "host failure")
        elif kind == "spot":
            node.draining = True  # Ray is told to drain on the notice; no new work lands
            self._at(self.now + self.failures.spot_notice_s, "reclaim", name)
        else:
            raise ValueError(f"unknown failure kind {kind!r}; use gpu, node or spot")
        self._refresh(node)

    # --- jobs ---------------------------------------------------------------------------------
    def _place_jobs(self) -> None:
        for job in self.jobs:
            free = self._free.get(job.pool, set())
            if job.state is not JobState.PENDING or len(free) < job.nodes:
                continue
            job.placed = tuple(sorted(free)[: job.nodes])
            for name in job.placed:
                self.nodes[name].job = job.name
                self._refresh(self.nodes[name])
            self._move(job, JobState.RESTARTING)
            job.started_at = self.now if job.started_at is None else job.started_at
            self._at(self.now + job.restart_s, "job", job.name, job.epoch)

    def _job_event(self, name: str, epoch: int) -> None:
        job = next(job for job in self.jobs if job.name == name)
        if job.epoch != epoch:
            return  # interrupted since this was scheduled
        if job.state is JobState.RESTARTING:
            self._move(job, JobState.RUNNING)
            if not math.isinf(job.finish_at()):
                self._at(job.finish_at(), "job", job.name, job.epoch)
        elif job.state is JobState.RUNNING:
            job.committed_s, job.finished_at = job.work_s, self.now
            self._unplace(job)
            self._move(job, JobState.DONE)

    def _interrupt(self, job: SimulatedJob, why: str) -> None:
        self.interruptions.append((self.now, job.name, why))
        saved, unsaved = job.trained(self.now)
        job.committed_s += saved
        job.lost_s += unsaved
        job.interruptions += 1
        self._unplace(job)
        self._move(job, JobState.PENDING)

    def _release(self, node: SimulatedNode, why: str) -> None:
        """A node stops serving its job: the whole gang is interrupted (synchronous training)."""
        if node.job is not None:
            job = next(job for job in self.jobs if job.name == node.job)
            if job.state in (JobState.RESTARTING, JobState.RUNNING):
                self._interrupt(job, why)

    def _unplace(self, job: SimulatedJob) -> None:
        for name in job.placed:
            node = self.nodes.get(name)
            if node is not None and node.job == job.name:
                node.job, node.idle_since = None, self.now
                self._refresh(node)
        job.placed = ()

    def _move(self, job: SimulatedJob, state: JobState) -> None:
        job.state, job.since, job.epoch = state, self.now, job.epoch + 1

    # --- views --------------------------------------------------------------------------------
    def _gang(self, job: SimulatedJob) -> Gang:
        shape = {"CPU": self._pool(job.pool).cpus_per_node, "GPU": self._pool(job.pool).gpus_per_node}
        bundle = Bundle(resources(shape), (Selector((LabelConstraint(POOL_LABEL, frozenset({job.pool})),)),))
        return Gang(name=job.name, bundles=(bundle,) * job.nodes, strategy="PACK")

    def _pool(self, name: str) -> PoolSpec:
        return self.pools.get(name) or PoolSpec(name=name)

    def _shape(self, pool: str) -> tuple[tuple[str, float], ...]:
        if pool not in self._shapes:
            self._shapes[pool] = resources(node_shape(self._pool(pool)))
        return self._shapes[pool]

    def _refresh(self, node: SimulatedNode) -> None:
        """Rebuild the node's cached provider and Ray values after any change to it."""
        free = self._free.setdefault(node.pool, set())
        # Ray places work only on admitted nodes: they join with no CPUs until their checks pass
        if node.ray_alive and node.admitted and node.job is None and not node.draining and not node.gpu_fault:
            free.add(node.name)
        else:
            free.discard(node.name)
        self._instances[node.name] = Instance(id=node.name, pool=node.pool, status=node.status,
                                              launched_at=node.launched_at, detail=node.detail)
        if node.node_id is not None:
            self._rays[node.name] = RayNode(
                node_id=node.node_id, instance=node.name, pool=node.pool, alive=node.ray_alive,
                address="10.0.0.1", draining=node.draining, death_reason=node.detail if not node.ray_alive else "",
                labels={POOL_LABEL: node.pool, INSTANCE_LABEL: node.name})

    def _drop(self, name: str) -> None:
        node = self.nodes.pop(name, None)
        if node is not None:
            node.ray_alive = False
            self._gpus -= node.gpus
            self._free.get(node.pool, set()).discard(name)
        self._instances.pop(name, None)
        self._rays.pop(name, None)


@dataclass
class SimulatedController:
    """The production pass (cluster/loop/reconcile.py: plan, persist, act) over a SimulatedCloud.
    It persists its state through the controller's FleetStore into an in-memory GCS KV store
    (`kv`, which counts what each pass writes); its actions are applied to the simulated cloud."""

    spec: FleetSpec
    cloud: SimulatedCloud
    state: FleetState = field(default_factory=FleetState)
    targets: dict[str, int] = field(default_factory=dict)
    events: list[object] = field(default_factory=list)
    requests: QuarantineRequests = field(default_factory=QuarantineRequests)
    ticks: int = 0
    usage: UsageMeter = field(default_factory=UsageMeter)   # GPU-seconds by pool and state
    kv: MemoryKV = field(default_factory=MemoryKV)
    store: FleetStore = field(init=False)

    def __post_init__(self) -> None:
        if not self.cloud.pools:
            self.cloud.pools = {pool.name: pool for pool in self.spec.pools}
        self.store = FleetStore(self.kv)

    def tick(self) -> Plan:
        result = reconcile(self, self.cloud.view(), self.cloud.now)
        self.ticks += 1
        return result

    def persist(self, result: Plan) -> None:
        self.store.put_state(result.state)
        self.events.extend(result.events)

    def apply(self, actions: Sequence[object]) -> None:
        self.cloud.apply(actions)

    def gpu_hours(self) -> dict[str, dict[str, float]]:
        """GPU-hours by pool and state so far (cluster/decide/usage.py), as the controller reports them."""
        return gpu_hours(self.usage.totals)

    def run(self, seconds: float, period: float | None = None, fast: bool = False) -> None:
        """Loop every `period` for `seconds`. `fast`: after a loop that did nothing, sleep to the
        next loop that can (the next event of the world or deadline of the planner) instead."""
        period = period or self.spec.scaling.loop_period_s
        start, end = self.cloud.now, self.cloud.now + seconds
        while self.cloud.now < end - 1e-9:
            result = self.tick()
            step = period
            if fast and not result.actions and not result.events:
                wake = self.wake_at()
                if wake > self.cloud.now + period:
                    step = math.ceil((min(wake, end) - start) / period - 1e-9) * period - (self.cloud.now - start)
            advance = max(period, min(step, end - self.cloud.now))
            self.cloud.advance(advance)
            pending = [name for name, target in result.autoscale.items()
                       if target.pending_bundles > target.unplaced_bundles]
            if advance > period + 1e-9 and pending:
                # The skipped loops saw the same pending demand (the world was still): the last of
                # them is when it was last seen, exactly as stepping every loop records it.
                seen = self.cloud.now - period
                self.state = dataclasses.replace(self.state, demand_at={**self.state.demand_at,
                                                                        **dict.fromkeys(pending, seen)})

    def wake_at(self) -> float:
        """The earliest time a loop could act: an event of the world, or a deadline the planner
        keeps (launch retry, boot timeout, terminate retry, backoff, idle timeout). A record in any
        other state than these wakes the next loop: unknown deadlines are never skipped. Deadlines
        already past were seen by the loop that just did nothing, and it chose to wait."""
        now = self.cloud.now
        if any(node.hung for node in self.cloud.nodes.values()):
            return now  # its silence turns into suspicion and death on the health policy's clock
        deadlines = []
        scaling = self.spec.scaling
        for record in self.state.nodes.values():
            if record.state is NodeState.READY:
                continue
            if record.state is NodeState.REQUESTED:
                deadlines += [record.last_action_at + RELAUNCH_AFTER_S, record.since + scaling.boot_timeout_s + TICK]
            elif record.state is NodeState.BOOTING:
                deadlines.append(record.launched_at + scaling.boot_timeout_s + TICK)
            elif record.state is NodeState.TERMINATING:
                deadlines.append(record.last_action_at + TERMINATE_RETRY_S)
            else:
                return now
        for count, last in self.state.pool_failures.values():
            deadlines.append(last + min(MAX_BACKOFF_S, 2.0 ** (count - 1)))
        for name, at in self.state.demand_at.items():  # idle nodes held while demand came and went
            pool = self.cloud.pools.get(name)
            if pool is not None and autoscales(self.spec, pool):
                deadlines.append(at + idle_timeout_s(self.spec, pool) + TICK)
        for node in self.cloud.nodes.values():
            pool = self.cloud.pools.get(node.pool)
            if pool is not None and node.ray_alive and node.job is None and autoscales(self.spec, pool):
                deadlines.append(node.idle_since + idle_timeout_s(self.spec, pool) + TICK)
        return min([self.cloud.next_event_at(), *(t for t in deadlines if t > now)])

    def restarted(self) -> SimulatedController:
        """The same controller after a crash that lost its memory (state comes back empty)."""
        return dataclasses.replace(self, state=FleetState(), events=[], usage=dataclasses.replace(self.usage),
                                   kv=MemoryKV())

    def resumed(self) -> SimulatedController:
        """The same controller after a crash, a new process reading its state back from the store."""
        store = FleetStore(self.kv)
        fresh = dataclasses.replace(self, state=store.state(), events=[], usage=dataclasses.replace(self.usage))
        fresh.store = store
        return fresh
