"""The fleet controller: a detached, named Ray actor on the head node that reconciles forever.

Each loop: observe (Ray's node table, the provider's instances, the agents' health reports, a
raylet probe of nodes gone quiet) -> plan (pure) -> persist the new state (write-ahead: a crash
after this line never forgets a launch it decided) -> act -> publish the status and health
documents -> the plugged-in steps (cluster/loop/steps.py; job supervision is one). Its state
lives in the GCS KV store (`cluster/loop/store.py`), so when Ray restarts the actor
(max_restarts=-1) the new instance resumes where the old one stopped: records of launched
instances are there, and instances it never recorded are adopted by name, not relaunched.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import statistics
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

from rayfleet.cluster.decide.demand import IdleClock
from rayfleet.cluster.decide.events import Event
from rayfleet.cluster.decide.plan import Plan, QuarantineRequests
from rayfleet.cluster.decide.state import FleetState, NodeState
from rayfleet.cluster.decide.view import ClusterView
from rayfleet.cluster.health.agent_set import AgentSet
from rayfleet.cluster.health.probe import probe_all
from rayfleet.cluster.loop.act import act
from rayfleet.cluster.loop.metrics import FleetMetrics
from rayfleet.cluster.loop.observe import observe
from rayfleet.cluster.loop.reconcile import UsageMeter, reconcile
from rayfleet.cluster.loop.status import fleet_status, health_document
from rayfleet.cluster.loop.steps import LoopStep, Pass
from rayfleet.cluster.loop.store import FleetStore
from rayfleet.cluster.providers import Provider, make_provider
from rayfleet.cluster.rayio import gcs
from rayfleet.cluster.spec.fleet import FleetSpec
from rayfleet.names import CONTROLLER_NAME, NAMESPACE

log = logging.getLogger("rayfleet.controller")

USAGE_MAX_GAP_S = 60.0  # a longer gap between passes: the controller was down (see UsageMeter)
PROBED = (NodeState.READY, NodeState.SUSPECT, NodeState.DEGRADED, NodeState.UNHEALTHY, NodeState.DRAINING)


class FleetController:
    """The actor's body. Ray calls its methods on the actor's threads; the loop has its own.

    It is the `Loop` that `reconcile` runs over (cluster/loop/reconcile.py): the spec, state,
    targets and quarantine requests of the pass, persisted to the GCS KV store, acted on through
    the fleet's provider."""

    def __init__(self, gcs_address: str, steps: Sequence[type] = ()) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.client = gcs.client(gcs_address)
        self.store = FleetStore(self.client)
        self.state: FleetState = self.store.state()
        self.started_at = time.time()
        self.loops = 0
        self.loop_ms: deque[float] = deque(maxlen=200)
        self.launch_errors: dict[str, str] = {}
        self.idle_clock = IdleClock()  # how long nodes have had nothing in use (autoscale scale-down)
        self.agents = AgentSet()
        self._reported: dict[str, int] = {}  # instance -> sequence of the last report sent to metrics
        self.quiet_until = time.time()  # reports from before a (re)start are not in memory
        totals, at = self.store.usage()  # GPU-seconds by pool and state, kept across restarts
        self.usage = UsageMeter(totals, at, max_gap_s=USAGE_MAX_GAP_S)
        self.steps: list[LoopStep] = [step() for step in steps]
        self._probes = ThreadPoolExecutor(max_workers=32, thread_name_prefix="rayfleet-probe")
        self._provider: Provider | None = None
        self._provider_spec: FleetSpec | None = None
        self.spec: FleetSpec | None = None
        self.targets: dict[str, int] = {}
        self.requests = QuarantineRequests()
        self.metrics = FleetMetrics()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rayfleet-reconcile", daemon=True)
        self._thread.start()
        log.info("controller started (pid %s); resumed %d node records", os.getpid(), len(self.state.nodes))

    # --- the loop -----------------------------------------------------------------------------
    def _run(self) -> None:
        due = time.monotonic()
        while not self._stop.is_set():
            started = time.monotonic()
            self._notice_own_lateness(started - due)
            period = 1.0
            try:
                period = self.reconcile_once()
            except Exception:  # one bad loop must not end the controller; the next one retries
                log.exception("reconcile loop failed")
            due = started + period
            self._stop.wait(max(0.0, due - time.monotonic()))

    def _notice_own_lateness(self, late_s: float) -> None:
        """Lifeguard's local health: a loop that starts late means this process was starved or
        paused; the silence of the nodes in that time is ours, not theirs."""
        spec = self._provider_spec
        limit = spec.health.heartbeat_timeout_s / 2 if spec else 1.5
        if late_s > limit:
            grace = spec.health.heartbeat_timeout_s if spec else 3.0
            self.quiet_until = time.time() + grace
            log.warning("the controller ran %.1fs late; node silence until now is not held against them", late_s)

    def reconcile_once(self) -> float:
        """One observe -> plan -> persist -> act -> publish -> steps pass; returns the loop period."""
        started = time.monotonic()
        spec = self.store.spec()
        if spec is None:
            return 1.0
        self.spec, self.targets, self.requests = spec, self.store.targets(), self._quarantine_requests()
        runtime = self.store.runtime()
        view, reports = self._observe(spec, runtime)
        now = time.time()
        result = reconcile(self, view, now)
        self._ensure_agents(spec)
        self.loops += 1
        self.loop_ms.append((time.monotonic() - started) * 1000)
        self.store.put_usage(self.usage.totals, now)
        status = fleet_status(spec, result.state, self.targets, now, self.info(), result.autoscale,
                              self.usage.totals, view.demand)
        self.store.put_status(status)
        self.store.put_health(health_document(result.state, reports, view.probes, now))
        self.metrics.record(status, self.loop_ms[-1], result.events)
        self._record_health(spec.name, result.state, reports)
        self._run_steps(Pass(spec=spec, state=result.state, events=result.events, notices=self._notices(),
                             now=now, runtime=runtime, client=self.client, agent=self._agent_of(result.state),
                             record=self.store.append_events))
        return spec.scaling.loop_period_s

    def _observe(self, spec: FleetSpec, runtime: dict[str, Any]) -> tuple[ClusterView, dict[str, Any]]:
        """Sync: Ray, the provider, the agents' reports, probes of quiet nodes, notice acks."""
        provider = self._provider_for(spec, runtime)
        view = observe(self.client, provider, spec.name, self.launch_errors, self.idle_clock)
        reports = self.agents.snapshot(self.state.nodes)
        notices = self._notices()
        acks = frozenset().union(*(step.acknowledged(self.client, runtime, notices) for step in self.steps)) \
            if notices else frozenset()
        view = dataclasses.replace(view, health=reports, quiet_until=self.quiet_until,
                                   probes=self._probe_quiet_nodes(spec, view, reports), notice_acks=acks)
        return view, reports

    # --- the Loop protocol (cluster/loop/reconcile.py) -----------------------------------------
    def persist(self, result: Plan) -> None:
        self.store.put_state(result.state)
        self.store.append_events(result.events)
        for event in result.events:
            log.info("%s: %s%s", event.kind, event.message, f" (reason: {event.reason})" if event.reason else "")

    def apply(self, actions: Sequence[object]) -> None:
        assert self.spec is not None and self._provider is not None
        self.launch_errors = act(actions, self._provider, self.spec, self.client)

    # --- helpers of the pass ------------------------------------------------------------------
    def _quarantine_requests(self) -> QuarantineRequests:
        asked = self.store.quarantine_requests()
        return QuarantineRequests(release={k: float(v) for k, v in asked.get("release", {}).items()},
                                  terminate=frozenset(asked.get("terminate", [])))

    def _run_steps(self, done: Pass) -> None:
        for step in self.steps:
            try:
                step.after(done)
            except Exception:  # a step never stops the fleet from being reconciled
                log.exception("loop step %s failed", type(step).__name__)

    def _agent_of(self, state: FleetState) -> Any:
        instance_of = {r.node_id: r.instance for r in state.nodes.values() if r.node_id}

        def agent(node_id: str) -> Any:
            instance = instance_of.get(node_id)
            if instance is None:
                return None
            try:
                return self.agents.agent(instance)
            except Exception:
                return None
        return agent

    def _record_health(self, fleet: str, state: Any, reports: dict[str, Any]) -> None:
        """Each new report's check results into the metrics (once per report, not per loop)."""
        for instance, report in reports.items():
            record = state.nodes.get(instance)
            if record is None or self._reported.get(instance) == report.sequence:
                continue
            self._reported[instance] = report.sequence
            for check in report.checks:
                self.metrics.record_health(fleet, record.pool, instance, check.name, check.status.value != "fail")
                if check.value is not None:
                    self.metrics.record_reading(fleet, record.pool, instance, check.name, check.value)

    def _probe_quiet_nodes(self, spec: FleetSpec, view: Any, reports: dict[str, Any]) -> dict[str, Any]:
        """Probe the raylets of nodes whose heartbeat is late (or that are already suspect)."""
        if view.ray_nodes is None:
            return {}
        ray = view.ray_by_instance()
        now = time.time()
        quiet = []
        for record in self.state.nodes.values():
            node = ray.get(record.instance)
            if record.state not in PROBED or node is None or not node.alive or not node.port:
                continue
            report = reports.get(record.instance)
            late = report is not None and now - report.received_at > 2 * spec.health.heartbeat_interval_s
            if late or record.state is NodeState.SUSPECT:
                quiet.append((record.instance, node.address, node.port))
        return probe_all(quiet, spec.health.probe_timeout_s, self._probes) if quiet else {}

    def _notices(self) -> dict[str, float]:
        return {r.node_id: r.notice_deadline for r in self.state.nodes.values()
                if r.state is NodeState.DRAINING and r.notice_deadline and r.node_id}

    def _ensure_agents(self, spec: FleetSpec) -> None:
        import ray

        try:
            self.agents.ensure(spec, self.state.nodes.values(), ray.get_runtime_context().current_actor)
        except Exception as error:
            log.warning("health agents not ensured: %s", error)

    def _provider_for(self, spec: FleetSpec, runtime: dict[str, Any]) -> Provider:
        if self._provider is None or spec != self._provider_spec:
            self._provider = make_provider(spec, runtime)
            self._provider_spec = spec
        return self._provider

    # --- called through Ray -------------------------------------------------------------------
    def report_health(self, report: dict[str, Any]) -> None:
        """A health agent's heartbeat with its newest check results."""
        self.agents.receive(report)

    def link_test(self, pool: str) -> dict[str, Any]:
        """Run the ring all-reduce test among the pool's ready nodes; names stragglers."""
        spec = self.store.spec()
        if spec is None or pool not in spec.pool_names:
            raise ValueError(f"no pool {pool!r}")
        ready = sorted(r.instance for r in self.state.nodes.values()
                       if r.pool == pool and r.state in (NodeState.READY, NodeState.DEGRADED))
        result = self.agents.link_test(spec, pool, ready)
        log.info("link test of pool %s: stragglers %s", pool, result["stragglers"] or "none")
        return result

    def info(self) -> dict[str, Any]:
        samples = list(self.loop_ms)
        return {"pid": os.getpid(), "started_at": self.started_at, "loops": self.loops,
                "loop_ms_p50": statistics.median(samples) if samples else 0.0,
                "loop_ms_max": max(samples) if samples else 0.0}

    def stop(self) -> None:
        """Stop reconciling (before `down` terminates the fleet, so nothing is relaunched)."""
        self._stop.set()
        self._thread.join(timeout=30)


def start_controller(gcs_address: str, steps: Sequence[type] = ()) -> Any:
    """Create the controller actor, or return the running one (safe to repeat). `steps`: the
    LoopStep classes it runs every pass (cluster/loop/steps.py), kept by Ray for its restarts."""
    import ray

    remote = ray.remote(FleetController)
    actor = remote.options(
        name=CONTROLLER_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
        num_cpus=0, resources={"node:__internal_head__": 0.001},  # on the head, taking no pool CPU
        max_restarts=-1, max_task_retries=-1, max_concurrency=16,
    ).remote(gcs_address, tuple(steps))
    ray.get(actor.info.remote(), timeout=120)
    return actor


def stop_controller() -> bool:
    """Stop and kill the controller actor if it runs; True if there was one."""
    import ray

    try:
        actor = ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
    except ValueError:
        return False
    try:
        ray.get(actor.stop.remote(), timeout=60)
    except Exception as error:  # it may already be dying; kill it all the same
        log.info("controller did not stop cleanly: %s", error)
    ray.kill(actor, no_restart=True)
    return True


