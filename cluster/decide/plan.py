"""The planner: desired fleet from observed fleet, as a pure function.

`plan(spec, state, view, now, targets)` takes values and returns values: the next remembered
state, the actions to apply, and the events that explain them. No I/O, no clock, no randomness:
the same function runs against real Ray and against the fleet simulator.

It works in two passes, as autoscaler v2's reconciler does:
1. sync: bring each node's record up to date with what the provider and Ray say (passive);
2. step: decide launches, terminations and drains from the updated records (active).
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence, Union

from rayfleet.cluster.decide.autoscale import PoolTarget, autoscale_targets, idle_timeout_s
from rayfleet.cluster.decide.events import Event
from rayfleet.cluster.health.policy import judge, liveness
from rayfleet.cluster.spec.fleet import FleetSpec, PoolSpec
from rayfleet.cluster.decide.state import FleetState, NodeRecord, NodeState
from rayfleet.cluster.decide.view import SPARE_LABEL, ClusterView, Instance, InstanceStatus, Probe, RayNode

S = NodeState
CAPACITY = frozenset(state for state in NodeState if state.counts_as_capacity)

RELAUNCH_AFTER_S = 30.0
"""A requested instance the provider still does not show after this long is asked for again.
Launch is idempotent (client tokens), so asking twice never makes two."""

TERMINATE_RETRY_S = 30.0
"""A terminating instance still present after this long is asked to terminate again."""

MAX_BACKOFF_S = 300.0
"""Launch failures back off exponentially per pool (1, 2, 4 ... s), capped here."""


@dataclass(frozen=True)
class Launch:
    pool: str
    instance: str


@dataclass(frozen=True)
class Terminate:
    pool: str
    instance: str
    reason: str


@dataclass(frozen=True)
class Drain:
    pool: str
    instance: str
    node_id: str
    reason: str
    deadline_s: float   # seconds from now after which the node is force-stopped
    preemption: bool    # a drain Ray may not reject (failed node, notice) vs one for idle scale-down


@dataclass(frozen=True)
class Admit:
    """Give a node its CPUs: nodes join with none, so no work lands before it passed its checks."""

    pool: str
    instance: str
    node_id: str
    cpus: float


@dataclass(frozen=True)
class Evict:
    """Declare a node dead in the GCS: its actors fail and its placement groups move now, so a
    training job fails over at once instead of after Ray's own node timeout (measured: 13-17 s).
    Only for a node that is gone, or drained and being terminated."""

    pool: str
    instance: str
    node_id: str
    reason: str = ""
    preempted: bool = False   # the node went as announced: Ray Train charges its preemption budget


@dataclass(frozen=True)
class Unadmit:
    """Take a node's CPUs back: no new work lands (reversible, unlike Ray's drain)."""

    pool: str
    instance: str
    node_id: str


@dataclass(frozen=True)
class Vacate:
    """End the work on a node (its actors, except its health agent): jobs restart from their
    checkpoints elsewhere while the node stays up for diagnosis."""

    pool: str
    instance: str
    node_id: str
    reason: str


@dataclass(frozen=True)
class RunChecks:
    """Ask a node's agent to run its active checks (the matmul burn) and report at once."""

    pool: str
    instance: str


Action = Union[Launch, Terminate, Drain, Admit, Evict, Unadmit, Vacate, RunChecks]


@dataclass(frozen=True)
class QuarantineRequests:
    """What users asked of quarantined nodes (`rayfleet quarantine release|terminate`)."""

    release: Mapping[str, float] = dataclasses.field(default_factory=dict)   # instance -> asked at
    terminate: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Plan:
    state: FleetState
    actions: tuple[Action, ...]
    events: tuple[Event, ...]
    autoscale: Mapping[str, PoolTarget] = field(default_factory=dict)  # per autoscaled pool (status)


def desired_nodes(pool: PoolSpec, targets: Mapping[str, int], autoscale: int | None = None) -> int:
    """The pool's size. Its floor is the manual target (rayfleet scale) if set, else the spec's
    `nodes`, else min_nodes; the autoscaler's target raises it, never lowers it; within [min, max]."""
    floor = targets.get(pool.name, pool.desired)
    wanted = floor if autoscale is None else max(floor, autoscale)
    return max(pool.min_nodes, min(pool.max_nodes, wanted))


def instance_name(fleet: str, pool: str, number: int) -> str:
    return f"{fleet}-{pool}-{number:04d}"


_NUMBER = re.compile(r"-(\d+)$")


def plan(spec: FleetSpec, state: FleetState, view: ClusterView, now: float,
         targets: Mapping[str, int] | None = None, requests: QuarantineRequests | None = None) -> Plan:
    """Decide what to do next. Pure: see the module docstring."""
    builder = _Planner(spec, state, view, now, targets or {}, requests or QuarantineRequests())
    builder.sync()
    builder.step()
    return builder.result()


class _Planner:
    """One planning pass. Holds the working copies; `plan` is its only user."""

    def __init__(self, spec: FleetSpec, state: FleetState, view: ClusterView, now: float,
                 targets: Mapping[str, int], requests: QuarantineRequests) -> None:
        self.spec = spec
        self.requests = requests
        self.state = state
        self.view = view
        self.now = now
        self.targets = targets
        self.records: dict[str, NodeRecord] = dict(state.nodes)
        self.sequence = dict(state.sequence)
        self.failures = dict(state.pool_failures)
        self.actions: list[Action] = []
        self.events: list[Event] = []
        self.pools = {pool.name: pool for pool in spec.pools}
        self.failed_pools: set[str] = set()
        self.autoscale: dict[str, PoolTarget] = {}
        self.wants: dict[str, int] = {}
        self.replacements = dict(state.replacements)
        self.demand_at = dict(state.demand_at)

    # ---- helpers -------------------------------------------------------------------------
    def event(self, kind: str, message: str, record: NodeRecord | None = None, reason: str = "",
              pool: str | None = None) -> None:
        self.events.append(Event(time=self.now, kind=kind, message=message,
                                 pool=record.pool if record else pool,
                                 instance=record.instance if record else None, reason=reason))

    def move(self, record: NodeRecord, state: NodeState, reason: str, **changes: object) -> NodeRecord:
        moved = record.to(state, self.now, reason, **changes)
        self.records[record.instance] = moved
        return moved

    def fail_launch(self, record: NodeRecord, reason: str) -> None:
        # One step of backoff per pass, however many launches of the batch failed together.
        if record.pool not in self.failed_pools:
            self.failed_pools.add(record.pool)
            count, _ = self.failures.get(record.pool, (0, 0.0))
            self.failures[record.pool] = (count + 1, self.now)
        self.event("failed", f"{record.instance} failed to start: {reason}", record, reason="launch")
        self.terminate(record, reason)

    def terminate(self, record: NodeRecord, reason: str, preempted: bool = False) -> None:
        """Stop a node's machine; its actors are declared dead first so their jobs fail over now."""
        if record.node_id:
            self.actions.append(Evict(record.pool, record.instance, record.node_id, reason, preempted))
        self.move(record, S.TERMINATING, reason, last_action_at=self.now)
        self.actions.append(Terminate(record.pool, record.instance, reason))

    # ---- 1. sync -------------------------------------------------------------------------
    def sync(self) -> None:
        instances = self.view.instances_by_id() if self.view.instances is not None else None
        ray = self.view.ray_by_instance() if self.view.ray_nodes is not None else None
        for record in list(self.records.values()):
            instance = instances.get(record.instance) if instances is not None else None
            node = ray.get(record.instance) if ray is not None else None
            self.sync_one(record, instance, node, instances is not None, ray is not None)
        if instances is not None:
            self.adopt(instances, ray or {})

    def sync_one(self, record: NodeRecord, instance: Instance | None, node: RayNode | None,
                 know_instances: bool, know_ray: bool) -> None:
        gone = know_instances and (instance is None or instance.status is InstanceStatus.TERMINATED)
        gone_detail = (instance.detail if instance is not None else "") or "the provider no longer lists it"
        joined = node is not None and node.alive
        error = self.view.launch_errors.get(record.instance)
        state = record.state

        if state is S.TERMINATING:
            if gone:
                self.move(record, S.TERMINATED, "terminated")
                self.event("terminated", f"{record.instance} terminated", record, reason=record.reason)
            return
        if state is S.REQUESTED:
            if error:
                self.fail_launch(record, error)
            elif joined:
                self.joined(record, node)
            elif know_instances and instance is not None and instance.status is not InstanceStatus.TERMINATED:
                self.move(record, S.BOOTING, "instance up, waiting for Ray to join",
                          launched_at=instance.launched_at or record.launched_at)
            elif gone and instance is not None:
                self.fail_launch(record, gone_detail)
            elif self.now - record.since > self.spec.scaling.boot_timeout_s:
                self.fail_launch(record, f"the provider did not show it within {self.spec.scaling.boot_timeout_s:.0f}s")
            return
        if state is S.BOOTING:
            if gone:
                self.fail_launch(record, f"instance gone while booting: {gone_detail}")
            elif joined:
                self.joined(record, node)
            elif self.now - record.launched_at > self.spec.scaling.boot_timeout_s:
                self.fail_launch(record, f"did not join Ray within {self.spec.scaling.boot_timeout_s:.0f}s")
            return
        if state in (S.READY, S.SUSPECT, S.DEGRADED, S.UNHEALTHY, S.DRAINING, S.QUARANTINED):
            if gone:
                self.lost(record, f"instance gone: {gone_detail}")
            elif know_ray and node is not None and not node.alive:
                self.lost(record, f"Ray marked the node dead: {node.death_reason or 'no reason given'}")
            elif know_ray and node is None:
                self.lost(record, "its Ray node is no longer registered")
            else:
                if joined and node.node_id != record.node_id:
                    # The same instance rejoined with a new raylet (e.g. after a head restart): a new
                    # raylet has its start-up resources again, so it is admitted anew.
                    record = dataclasses.replace(record, node_id=node.node_id, address=node.address,
                                                 admitted=False)
                    self.records[record.instance] = record
                if state in (S.READY, S.SUSPECT, S.DEGRADED, S.UNHEALTHY):
                    self.judge_health(record)
                elif self.view.probes.get(record.instance) is Probe.GONE:
                    self.lost(record, "its raylet refuses connections: the process is gone")

    def joined(self, record: NodeRecord, node: RayNode) -> None:
        self.move(record, S.READY, "joined Ray", node_id=node.node_id, address=node.address)
        self.failures.pop(record.pool, None)
        kind = "spare" if record.spare else "pool"
        self.event("joined", f"{record.instance} joined Ray as node {node.node_id[:12]} ({kind})", record)

    def take_notice(self, record: NodeRecord, deadline: float, why: str) -> None:
        """The node goes away at `deadline`: drain it with that deadline (no new work; Ray Train sees
        a preemption), tell its jobs to checkpoint now (the controller publishes the notice), and
        replace it in this same pass, before it goes."""
        reason = f"{why}: goes in {deadline - self.now:.0f}s"
        if record.node_id:
            self.actions.append(Drain(record.pool, record.instance, record.node_id, reason,
                                      deadline_s=max(0.0, deadline - self.now), preemption=True))
        self.move(record, S.DRAINING, reason, notice_deadline=deadline)
        self.event("notice", f"{record.instance} {reason}; replacing it now", record, reason="notice")

    def lost(self, record: NodeRecord, reason: str) -> None:
        """The node is gone: no drain can help. Its replacement is launched by `size_pool`."""
        self.event("lost", f"{record.instance} lost: {reason}", record, reason="liveness")
        self.event("replace", f"{record.instance} terminated for replacement: {reason}", record, reason=reason)
        self.terminate(record, reason)

    def judge_health(self, record: NodeRecord) -> None:
        """Liveness first (alive / suspect / dead), then the checks (healthy / degraded / unhealthy)."""
        report = self.view.health.get(record.instance)
        suspect_since = record.since if record.state is S.SUSPECT else None
        live = liveness(report, self.view.probes.get(record.instance), self.now, self.spec.health,
                        self.view.quiet_until, suspect_since)
        if live.state == "dead":
            self.lost(record, live.reason)
            return
        if live.state == "suspect":
            if record.state is not S.SUSPECT:
                self.event("suspect", f"{record.instance} is suspect: {live.reason}", record, reason="liveness")
            self.move(record, S.SUSPECT, live.reason)
            return
        if report is not None and report.notice_deadline and report.notice_deadline > self.now:
            self.take_notice(record, report.notice_deadline, report.notice_reason)
            return
        verdict = judge(report)
        if verdict.level == "unhealthy":
            if record.state is not S.UNHEALTHY:
                self.move(record, S.UNHEALTHY, verdict.reason, hardware=verdict.hardware)
                self.event("unhealthy", f"{record.instance} failed its checks: {verdict.reason}", record,
                           reason="hardware check" if verdict.hardware else "check")
        elif verdict.level == "degraded":
            if record.state is not S.DEGRADED:
                self.event("degraded", f"{record.instance} is degraded: {verdict.reason}", record, reason="check")
            self.move(record, S.DEGRADED, verdict.reason)
        elif record.state is not S.READY:
            was = record.state.value
            self.move(record, S.READY, f"healthy again (was {was})")
            self.event("recovered", f"{record.instance} is healthy again (was {was})", record)

    def adopt(self, instances: Mapping[str, Instance], ray: Mapping[str, RayNode]) -> None:
        """Instances of this fleet the controller does not remember (it restarted without its
        state, or a launch raced a crash) are adopted, never launched again."""
        for instance in instances.values():
            if instance.id in self.records or instance.status is InstanceStatus.TERMINATED:
                continue
            match = _NUMBER.search(instance.id)
            if match:
                self.sequence[instance.pool] = max(self.sequence.get(instance.pool, 0), int(match.group(1)))
            if instance.pool not in self.pools:
                record = NodeRecord(instance.id, instance.pool, S.TERMINATING, self.now,
                                    "its pool is no longer in the spec", launched_at=instance.launched_at,
                                    last_action_at=self.now)
                self.records[instance.id] = record
                self.actions.append(Terminate(instance.pool, instance.id, record.reason))
                self.event("terminate", f"{instance.id} terminated: pool {instance.pool} left the spec",
                           record, reason="spec")
                continue
            if not self.ours(instance.id):
                self.consume_request(instance.pool)
            node = ray.get(instance.id)
            alive = node is not None and node.alive
            spare = bool(node is not None and node.labels.get(SPARE_LABEL) == "true")
            record = NodeRecord(instance.id, instance.pool, S.READY if alive else S.BOOTING, self.now,
                                "adopted", launched_at=instance.launched_at or self.now,
                                node_id=node.node_id if alive else None,
                                address=node.address if alive else None, spare=spare)
            self.records[instance.id] = record
            self.event("adopt", f"adopted {instance.id} ({record.state.value}); it was running already",
                       record, reason="restart")

    def ours(self, name: str) -> bool:
        """Named by this planner (`instance_name`): FLEET-POOL-NNNN with a pool of the spec."""
        prefix = f"{self.spec.name}-"
        if not name.startswith(prefix):
            return False
        pool, _, number = name[len(prefix):].rpartition("-")
        return pool in self.pools and number.isdigit() and len(number) >= 4

    def consume_request(self, pool: str) -> None:
        """A provider that names its own machines (KubeRay names pods) answers a launch with an
        instance of another name: it fulfils the oldest request of its pool, which is dropped."""
        waiting = [r for r in self.records.values()
                   if r.pool == pool and r.state is S.REQUESTED and self.ours(r.instance)]
        if waiting:
            oldest = min(waiting, key=lambda r: (r.since, r.instance))
            del self.records[oldest.instance]

    # ---- 2. step -------------------------------------------------------------------------
    def step(self) -> None:
        for record in list(self.records.values()):
            if record.state is S.UNHEALTHY:
                self.remediate(record)
            elif record.state is S.DRAINING:
                self.finish_drain(record)
            elif record.state is S.QUARANTINED:
                self.tend_quarantine(record)
            elif record.state is S.REQUESTED and self.now - record.last_action_at >= RELAUNCH_AFTER_S:
                self.records[record.instance] = dataclasses.replace(
                    record, last_action_at=self.now, launch_attempts=record.launch_attempts + 1)
                self.actions.append(Launch(record.pool, record.instance))
            elif record.state is S.TERMINATING and self.now - record.last_action_at >= TERMINATE_RETRY_S:
                self.records[record.instance] = dataclasses.replace(record, last_action_at=self.now)
                self.actions.append(Terminate(record.pool, record.instance, record.reason))
        capacity = self.capacity_by_pool()
        self.autoscale = autoscale_targets(
            self.spec, {pool.name: capacity.get((pool.name, False), []) for pool in self.spec.pools},
            self.view.demand, self.view.busy_nodes, self.now)
        self.hold_idle_while_demand_comes_and_goes()
        for pool in self.spec.pools:
            target = self.autoscale.get(pool.name)
            self.wants[pool.name] = desired_nodes(pool, self.targets, target.nodes if target else None)
            self.size_pool(pool, spare=False, want=self.wants[pool.name],
                           members=capacity.get((pool.name, False), []))
            # spares promoted into the pool just now are spares no more
            spares = [self.records[r.instance] for r in capacity.get((pool.name, True), [])]
            self.size_pool(pool, spare=True, want=pool.hot_spares, members=[r for r in spares if r.spare])
        for record in list(self.records.values()):
            self.admit(record)

    def hold_idle_while_demand_comes_and_goes(self) -> None:
        """No idle node is removed from a pool that had placeable pending demand within its idle
        timeout: Ray Train gives up on a gang it cannot place yet and asks again later (its
        placement group comes and goes while the pool grows), and a node idle only because the
        rest of its gang was still booting belongs to that gang. Demand that would not fit even at
        max_nodes holds nothing."""
        for name, target in list(self.autoscale.items()):
            pool = self.pools.get(name)
            if pool is None:
                continue
            if target.pending_bundles > target.unplaced_bundles:
                self.demand_at[name] = self.now
            seen = self.demand_at.get(name)
            if target.removable and seen is not None and self.now - seen < idle_timeout_s(self.spec, pool):
                self.autoscale[name] = dataclasses.replace(
                    target, removable=(), nodes=target.nodes + len(target.removable),
                    reason=f"{target.reason}; idle nodes held: demand was pending {self.now - seen:.0f}s ago")

    def capacity_by_pool(self) -> dict[tuple[str, bool], list[NodeRecord]]:
        """Records that count as capacity, by (pool, spare): one pass over the fleet, not one per
        pool (12,500 nodes in tens of pools must plan well inside a second)."""
        out: dict[tuple[str, bool], list[NodeRecord]] = {}
        for record in self.records.values():
            if record.state in CAPACITY:
                key = (record.pool, record.spare)
                members = out.get(key)
                if members is None:
                    out[key] = [record]
                else:
                    members.append(record)
        return out

    def remediate(self, record: NodeRecord) -> None:
        """A live node failing its checks is drained (no new work lands; running work gets
        `drain_deadline_s`), within the pool's rate limit and max_unavailable."""
        pool = self.pools.get(record.pool)
        if pool is None:
            return
        recent = [t for t in self.replacements.get(pool.name, ()) if self.now - t < 3600]
        draining = sum(r.pool == pool.name and r.state is S.DRAINING for r in self.records.values())
        held = None
        if len(recent) >= self.spec.health.max_replacements_per_hour:
            held = f"held: {len(recent)} replacements in the last hour (max_replacements_per_hour)"
        elif draining >= pool.max_unavailable:
            held = f"held: {draining} node(s) of {pool.name} already draining (max_unavailable)"
        if held:
            if not record.reason.startswith("held"):
                self.event("held", f"{record.instance} not replaced yet, {held}", record, reason=record.reason)
                self.move(record, S.UNHEALTHY, f"{held}; {record.reason}")
            return
        self.replacements[pool.name] = (*recent, self.now)
        reason = record.reason.split("; ", 1)[-1] if record.reason.startswith("held") else record.reason
        if record.hardware and record.node_id:
            self.quarantine(record, reason)
            return
        if record.node_id:
            self.actions.append(Drain(pool.name, record.instance, record.node_id, reason,
                                      deadline_s=self.spec.health.drain_deadline_s, preemption=True))
        self.move(record, S.DRAINING, reason)
        self.event("drain", f"{record.instance} draining for replacement: {reason}", record, reason="check")

    def quarantine(self, record: NodeRecord, reason: str) -> None:
        """Keep a node that failed a hardware check for diagnosis, out of the pool's capacity: its
        CPUs are taken back (Ray 2.60 cannot undo a drain, so a drain would make a release
        impossible) and its work is ended so jobs resume from their checkpoints elsewhere."""
        assert record.node_id is not None
        self.actions.append(Unadmit(record.pool, record.instance, record.node_id))
        self.actions.append(Vacate(record.pool, record.instance, record.node_id, reason))
        self.move(record, S.QUARANTINED, reason, admitted=False)
        self.event("quarantine", f"{record.instance} quarantined: {reason}", record, reason="hardware check")

    def tend_quarantine(self, record: NodeRecord) -> None:
        """Release (after its checks pass again) or terminate a quarantined node, as asked or as the
        pool's limits require."""
        asked = self.requests.release.get(record.instance)
        if asked is not None and asked < record.since:
            asked = None  # asked before this quarantine began: not a release of it
        if record.instance in self.requests.terminate:
            self.event("terminate", f"{record.instance} terminated from quarantine on request", record,
                       reason="rayfleet quarantine terminate")
            self.terminate(record, "terminated from quarantine on request")
            return
        if asked is not None:
            report = self.view.health.get(record.instance)
            if record.last_action_at < asked:  # checks not yet run since the request
                self.actions.append(RunChecks(record.pool, record.instance))
                self.records[record.instance] = dataclasses.replace(record, last_action_at=self.now)
            elif report is not None and report.sent_at > asked:
                verdict = judge(report)
                if verdict.level != "unhealthy":
                    self.move(record, S.READY, "released: its checks passed", hardware=False)
                    self.event("release", f"{record.instance} released from quarantine: its checks passed",
                               record, reason="rayfleet quarantine release")
                elif not record.reason.startswith("release refused"):
                    self.move(record, S.QUARANTINED, f"release refused: checks still fail: {verdict.reason}")
                    self.event("release-refused", f"{record.instance} stays quarantined: {verdict.reason}",
                               record, reason="rayfleet quarantine release")
            return
        health = self.spec.health
        pool_quarantine = sorted((r for r in self.records.values()
                                  if r.pool == record.pool and r.state is S.QUARANTINED), key=lambda r: r.since)
        too_many = len(pool_quarantine) > health.max_quarantined and record is pool_quarantine[0]
        too_old = self.now - record.since > health.quarantine_max_age_s
        if too_many or too_old:
            why = (f"quarantine limit: {len(pool_quarantine)} > max_quarantined {health.max_quarantined}"
                   if too_many else f"quarantined longer than quarantine_max_age_s {health.quarantine_max_age_s:.0f}")
            self.event("terminate", f"{record.instance} terminated from quarantine: {why}", record, reason=why)
            self.terminate(record, why)

    def finish_drain(self, record: NodeRecord) -> None:
        """Terminate a draining node when its deadline comes; a node with a notice as soon as every
        job on it checkpointed for the notice (a node running no job counts: nothing to save).
        (Ray's node table reports idleness as of registration, so it is not read here.)"""
        if record.notice_deadline:
            acked = record.node_id in self.view.notice_acks
            if acked or self.now >= record.notice_deadline:
                why = "its jobs checkpointed" if acked else "its notice's deadline came"
                self.event("replace", f"{record.instance} ended before its notice ({why})", record, reason="notice")
                self.terminate(record, record.reason, preempted=True)
            return
        if self.now - record.since >= self.spec.health.drain_deadline_s:
            self.event("replace", f"{record.instance} terminated for replacement: {record.reason}", record,
                       reason=record.reason)
            self.terminate(record, record.reason)

    def admit(self, record: NodeRecord) -> None:
        """Give a ready, non-spare node its CPUs once its agent reported it healthy (or degraded)."""
        if record.admitted or record.spare or record.node_id is None:
            return
        if record.state not in (S.READY, S.DEGRADED) or record.instance not in self.view.health:
            return
        pool = self.pools.get(record.pool)
        if pool is None:
            return
        self.records[record.instance] = dataclasses.replace(record, admitted=True)
        self.actions.append(Admit(pool.name, record.instance, record.node_id, pool.cpus_per_node))
        self.event("admitted", f"{record.instance} admitted: its checks passed, it now takes work", record,
                   reason="checks passed")

    def promote_spares(self, pool: PoolSpec, count: int) -> int:
        """Turn up to `count` ready hot spares into pool nodes (admitted in this pass): a
        replacement in about a second instead of a launch. Returns how many were promoted."""
        if not self.spec.health.use_spares_first:
            return 0
        ready = sorted((r for r in self.records.values()
                        if r.pool == pool.name and r.spare and r.state is S.READY), key=lambda r: r.instance)
        for record in ready[:count]:
            self.records[record.instance] = dataclasses.replace(record, spare=False, reason="promoted from hot spare")
            self.event("promote", f"hot spare {record.instance} joins pool {pool.name}", record,
                       reason="replacing capacity")
        return min(count, len(ready))

    def size_pool(self, pool: PoolSpec, spare: bool, want: int,
                  members: Sequence[NodeRecord] | None = None) -> None:
        if members is None:
            members = [r for r in self.records.values()
                       if r.pool == pool.name and r.spare == spare and r.state.counts_as_capacity]
        members = list(members)
        have = len(members)
        if have < want:
            promoted = self.promote_spares(pool, want - have) if not spare else 0
            if want - have - promoted > 0:
                self.grow(pool, want - have - promoted, spare)
        elif have > want:
            self.shrink(pool, members, have - want, spare)

    def grow(self, pool: PoolSpec, count: int, spare: bool) -> None:
        failures, last = self.failures.get(pool.name, (0, 0.0))
        if failures:
            wait = min(MAX_BACKOFF_S, 2.0 ** (failures - 1))
            if self.now - last < wait:
                return
        count = min(count, self.spec.scaling.upscaling_speed)
        what = "hot spare" if spare else "node"
        for _ in range(count):
            number = self.sequence.get(pool.name, 0) + 1
            self.sequence[pool.name] = number
            name = instance_name(self.spec.name, pool.name, number)
            record = NodeRecord(name, pool.name, S.REQUESTED, self.now, f"launching {what}",
                                launched_at=self.now, spare=spare, launch_attempts=1,
                                last_action_at=self.now)
            self.records[name] = record
            self.actions.append(Launch(pool.name, name))
            self.event("launch", f"launching {what} {name} for pool {pool.name}", record,
                       reason=self.growth_reason(pool, spare))

    def growth_reason(self, pool: PoolSpec, spare: bool) -> str:
        if spare:
            return f"hot_spares={pool.hot_spares}"
        target = self.autoscale.get(pool.name)
        if target is not None and target.nodes > desired_nodes(pool, self.targets):
            return target.reason
        if pool.name in self.targets:
            return f"manual target {self.targets[pool.name]}"
        return f"spec nodes={pool.desired}"

    def shrink(self, pool: PoolSpec, members: list[NodeRecord], count: int, spare: bool) -> None:
        """Remove `count` nodes. An autoscaled pool gives up its idle nodes, longest idle first:
        its target never asks for more than those (busy nodes stay) unless max_nodes was lowered."""
        busy = self.view.busy_nodes
        target = None if spare else self.autoscale.get(pool.name)
        idle = dict(target.removable) if target else {}

        def cost(record: NodeRecord) -> tuple[int, int, float]:
            # Cheapest first: not yet started, then idle, then newest. Busy nodes last of all.
            return (0 if record.state.starting else 1, 1 if record.node_id in busy else 0, -record.launched_at)

        newest_first = sorted(members, key=lambda record: record.instance, reverse=True)
        order = sorted(newest_first, key=cost)
        if idle:
            order = sorted((r for r in members if r.instance in idle), key=lambda r: (-idle[r.instance], r.instance)) \
                + [r for r in order if r.instance not in idle]
        for record in order[:count]:
            if record.instance in idle:
                reason = (f"idle {idle[record.instance]:.0f}s over idle_timeout {idle_timeout_s(self.spec, pool):g}s "
                          f"(autoscale; floor {desired_nodes(pool, self.targets)})")
            elif spare:
                reason = f"hot_spares={pool.hot_spares}"
            else:
                reason = f"scale down to {self.wants.get(pool.name, desired_nodes(pool, self.targets))}"
            drained = bool(record.node_id and record.state is S.READY)
            if drained:
                self.actions.append(Drain(pool.name, record.instance, record.node_id, reason,
                                          deadline_s=30.0, preemption=False))
            self.move(record, S.TERMINATING, reason, last_action_at=self.now)
            self.actions.append(Terminate(pool.name, record.instance, reason))
            what = "removed, drain requested first" if drained else "removed"
            self.event("scale", f"{record.instance} {what}: {reason}", record, reason=reason)

    def result(self) -> Plan:
        nodes = {key: value for key, value in self.records.items() if value.state is not S.TERMINATED}
        state = dataclasses.replace(self.state, nodes=nodes, sequence=self.sequence, pool_failures=self.failures,
                                    replacements=self.replacements, demand_at=self.demand_at)
        return Plan(state=state, actions=tuple(self.actions), events=tuple(self.events), autoscale=self.autoscale)
