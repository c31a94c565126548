"""The fleet controller: a detached, named Ray actor on the head node that reconciles forever.

Each loop: observe (Ray's node table, the provider's instances, the agents' health reports, a
raylet probe of nodes gone quiet) -> plan (pure) -> persist the new state (write-ahead: a crash
after this line never forgets a launch it decided) -> act -> publish the status and health
documents. Its state lives in the GCS KV store (`cluster.store`), so when Ray restarts the actor
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

from rayfleet.cluster.rayio import gcs
from rayfleet.cluster.loop.act import act
from rayfleet.cluster.decide.autoscale import pending_report
from rayfleet.cluster.decide.demand import IdleClock
from rayfleet.cluster.decide.events import Event
from rayfleet.cluster.health.agent_set import AgentSet
from rayfleet.cluster.health.probe import probe_all
from rayfleet.cluster.loop.metrics import FleetMetrics
from rayfleet.cluster.loop.observe import observe
from rayfleet.cluster.decide.plan import QuarantineRequests, plan
from rayfleet.cluster.providers import Provider, make_provider
from rayfleet.cluster.spec.fleet import FleetSpec
from rayfleet.cluster.decide.state import NodeState
from rayfleet.cluster.loop.status import fleet_status, health_document
from rayfleet.cluster.loop.store import FleetStore
from rayfleet.cluster.decide.usage import accumulate, gpu_hours

log = logging.getLogger("rayfleet.controller")

CONTROLLER_NAME = "rayfleet-controller"
JOB_WATCH_PERIOD_S = 5.0
FAULT_KINDS = frozenset({"lost", "unhealthy", "quarantine", "drain"})
"""Events that take a node, and the job workers on it, out of service (recorded in those jobs' histories)."""
NAMESPACE = "rayfleet"
PROBED = (NodeState.READY, NodeState.SUSPECT, NodeState.DEGRADED, NodeState.UNHEALTHY, NodeState.DRAINING)


class FleetController:
    """The actor's body. Ray calls its methods on the actor's threads; the loop has its own."""

    def __init__(self, gcs_address: str) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.client = gcs.client(gcs_address)
        self.store = FleetStore(self.client)
        self.state = self.store.state()
        self.started_at = time.time()
        self.loops = 0
        self.loop_ms: deque[float] = deque(maxlen=200)
        self.launch_errors: dict[str, str] = {}
        self.idle_clock = IdleClock()  # how long nodes have had nothing in use (autoscale scale-down)
        self.agents = AgentSet()
        self._reported: dict[str, int] = {}  # instance -> sequence of the last report sent to metrics
        self.quiet_until = time.time()  # reports from before a (re)start are not in memory
        self.usage, self.usage_at = self.store.usage()  # GPU-seconds by pool and state, kept across restarts
        self._faults_recorded: set[tuple[str, str, str]] = set()  # (job, submission, instance)
        self._history_tails: dict[str, Any] = {}  # job -> history.Tail (goodput metrics)
        self._jobs_checked = time.monotonic()  # first job check one period after a (re)start
        self._published_notices: dict[str, float] = {}
        from rayfleet.jobs.supervision.supervise import HangWatch

        self._hangs = HangWatch()
        self._probes = ThreadPoolExecutor(max_workers=32, thread_name_prefix="rayfleet-probe")
        self._provider: Provider | None = None
        self._provider_spec: FleetSpec | None = None
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
        """One observe -> plan -> persist -> act -> publish pass; returns the loop period."""
        started = time.monotonic()
        spec = self.store.spec()
        if spec is None:
            return 1.0
        provider = self._provider_for(spec)
        targets = self.store.targets()
        view = observe(self.client, provider, spec.name, self.launch_errors, self.idle_clock)
        reports = self.agents.snapshot(self.state.nodes)
        view = dataclasses.replace(view, health=reports, quiet_until=self.quiet_until,
                                   probes=self._probe_quiet_nodes(spec, view, reports),
                                   notice_acks=self._notice_acks())
        now = time.time()
        asked = self.store.quarantine_requests()
        requests = QuarantineRequests(release={k: float(v) for k, v in asked.get("release", {}).items()},
                                      terminate=frozenset(asked.get("terminate", [])))
        result = plan(spec, self.state, view, now, targets, requests)
        self.store.put_state(result.state)
        # Memory follows what was persisted at once: if acting fails below, the next loop goes on
        # from this state (its steps are idempotent) instead of deciding, and announcing, it again.
        self.state = result.state
        self.store.append_events(result.events)
        for event in result.events:
            log.info("%s: %s%s", event.kind, event.message, f" (reason: {event.reason})" if event.reason else "")
        self.launch_errors = act(result.actions, provider, spec, self.client)
        self._ensure_agents(spec)
        self._supervise_jobs(result.state, now, result.events)
        if time.monotonic() - self._jobs_checked >= JOB_WATCH_PERIOD_S:
            self._jobs_checked = time.monotonic()
            self._watch_jobs(spec)
        self.loops += 1
        self.loop_ms.append((time.monotonic() - started) * 1000)
        if self.usage_at is not None and now - self.usage_at < 60:  # a longer gap: the controller was down
            self.usage = accumulate(self.usage, result.state.nodes.values(),
                                    {pool.name: pool.gpus_per_node for pool in spec.pools}, view.busy_nodes,
                                    now - self.usage_at)
        self.usage_at = now
        self.store.put_usage(self.usage, now)
        status = fleet_status(spec, result.state, targets, now, self.info(), result.autoscale)
        status["gpu_hours"] = gpu_hours(self.usage)
        status["pending"] = pending_report(spec, view.demand)
        status["pool_failures"] = {pool: {"count": count, "last": last}
                                   for pool, (count, last) in result.state.pool_failures.items()}
        self.store.put_status(status)
        self.store.put_health(health_document(result.state, reports, view.probes, now))
        self.metrics.record(status, self.loop_ms[-1], result.events)
        self._record_health(spec.name, result.state, reports)
        return spec.scaling.loop_period_s

    def _record_health(self, fleet: str, state: Any, reports: dict[str, Any]) -> None:
        """Each new report's check results into the metrics (once per report, not per loop)."""
        for instance, report in reports.items():
            record = state.nodes.get(instance)
            if record is None or self._reported.get(instance) == report.sequence:
                continue
            self._reported[instance] = report.sequence
            for check in report.checks:
                self.metrics.record_health(fleet, record.pool, instance, check.name, check.status.value != "fail")

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

    def _notice_acks(self) -> frozenset[str]:
        """Noticed nodes whose jobs have all checkpointed for the notice (read before planning)."""
        from rayfleet.jobs.supervision import supervise

        notices = self._notices()
        if not notices:
            return frozenset()
        try:
            beats = supervise.running(supervise.read_beats(self.client), self.store.runtime().get("storage"))
            return supervise.acknowledged(notices, beats, supervise.read_acks(self.client))
        except Exception as error:
            log.info("notice acknowledgements not read: %s", error)
            return frozenset()

    def _notices(self) -> dict[str, float]:
        return {r.node_id: r.notice_deadline for r in self.state.nodes.values()
                if r.state is NodeState.DRAINING and r.notice_deadline and r.node_id}

    def _supervise_jobs(self, state: Any, now: float, events: Sequence[Event] = ()) -> None:
        """Publish notices for the jobs' workers; find hung jobs and respond (see jobs/supervision/supervise.py);
        record in a job's history when a node it runs on fails (its goodput's detection time)."""
        from rayfleet.jobs.supervision import history
        from rayfleet.jobs.supervision import supervise

        try:
            notices = self._notices()
            if notices != self._published_notices:
                supervise.publish_notices(self.client, notices)
                self._published_notices = notices
            storage = self.store.runtime().get("storage")
            if not storage:
                return
            instance_of = {r.node_id: r.instance for r in state.nodes.values() if r.node_id}

            def agent_of(node_id: str) -> Any:
                instance = instance_of.get(node_id)
                if instance is None:
                    return None
                try:
                    return self.agents.agent(instance)
                except Exception:
                    return None

            beats = supervise.read_beats(self.client)
            failed = {e.instance: e for e in events if e.kind in FAULT_KINDS and e.instance}
            if failed:
                node_of = {r.instance: r.node_id for r in state.nodes.values() if r.node_id}
                for job, instance, submission in supervise.jobs_on(beats, {i: node_of.get(i) for i in failed}):
                    if (job, submission, instance) not in self._faults_recorded:
                        self._faults_recorded.add((job, submission, instance))
                        history.record(storage, job, "fault", submission_id=submission, instance=instance,
                                       reason=failed[instance].message)
            held = supervise.holding(beats, supervise.read_acks(self.client), now) if notices else frozenset()
            for job, hang, folder in self._hangs.check(beats, storage, agent_of, now, held):
                where = instance_of.get(hang.node_id, hang.node_id[:12])
                self.store.append_events([Event(now, "hang", f"job {job}: {hang.reason} on {where}; stacks in "
                                                f"{folder}; restarting it from its checkpoint", instance=where,
                                                reason="no progress")])
        except Exception as error:
            log.info("job supervision skipped: %s", error)

    def _watch_jobs(self, spec: FleetSpec) -> None:
        """Resubmit jobs whose driver died (see jobs/supervision/resubmit.py); any error skips this round, never
        resubmits: a job table that cannot be read says nothing about the jobs."""
        from rayfleet.jobs.supervision import resubmit as watch

        runtime = self.store.runtime()
        storage, dashboard = runtime.get("storage"), runtime.get("dashboard_url")
        if not storage or not dashboard:
            return
        try:
            from ray.job_submission import JobSubmissionClient

            client = JobSubmissionClient(dashboard)
            ray_jobs = {info.submission_id: str(info.status.value) for info in client.list_jobs()
                        if info.submission_id}
            actors = gcs.actors(self.client)
            for orphan in watch.orphans(storage, ray_jobs, watch.dead_drivers(actors)):
                submitted = watch.resubmit(client, storage, orphan, watch.python_for(spec.provider))
                kind, message = ("resubmit", f"job {orphan.job} lost its driver; resubmitted as {submitted}") \
                    if submitted else ("failed", f"job {orphan.job} lost its driver too often; given up")
                self.store.append_events([Event(time.time(), kind, message, reason="driver lost")])
        except Exception as error:
            log.info("job watch skipped: %s", error)
        try:
            from rayfleet.jobs.supervision import goodput

            self.metrics.record_jobs(spec.name, goodput.recent(storage, time.time(), self._history_tails))
        except Exception as error:
            log.info("job goodput not published: %s", error)

    def _ensure_agents(self, spec: FleetSpec) -> None:
        import ray

        try:
            self.agents.ensure(spec, self.state.nodes.values(), ray.get_runtime_context().current_actor)
        except Exception as error:
            log.warning("health agents not ensured: %s", error)

    def _provider_for(self, spec: FleetSpec) -> Provider:
        if self._provider is None or spec != self._provider_spec:
            self._provider = make_provider(spec, self.store.runtime())
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


def start_controller(gcs_address: str) -> Any:
    """Create the controller actor, or return the running one (safe to repeat)."""
    import ray

    remote = ray.remote(FleetController)
    actor = remote.options(
        name=CONTROLLER_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
        num_cpus=0, resources={"node:__internal_head__": 0.001},  # on the head, taking no pool CPU
        max_restarts=-1, max_task_retries=-1, max_concurrency=16,
    ).remote(gcs_address)
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


