"""Job supervision as a step of the controller's loop (cluster/loop/steps.py).

Every pass it publishes preemption notices to the jobs' workers and tells the planner which
noticed nodes' jobs have checkpointed for them; it records in a job's history when a node the job
runs on fails (its goodput's detection time); it finds hung jobs, saves their stacks and kills the
stuck rank. Every `WATCH_PERIOD_S` it resubmits jobs whose driver died and publishes each job's
goodput as metrics.

Why a step and not an actor of its own: it needs exactly what the pass just observed and decided
(node records, this pass's events, the notices), at the loop's cadence, and a second actor would
need its own restart, its own reads of the same GCS state and an ordering against the controller.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Mapping

from rayfleet.cluster.decide.events import Event
from rayfleet.cluster.loop.steps import Pass
from rayfleet.cluster.rayio import gcs
from rayfleet.jobs.contract import python_for
from rayfleet.jobs.supervision import goodput, history, resubmit, supervise

log = logging.getLogger("rayfleet.jobs.supervision")

WATCH_PERIOD_S = 5.0
FAULT_KINDS = frozenset({"lost", "unhealthy", "quarantine", "drain"})
"""Events that take a node, and the job workers on it, out of service (recorded in those jobs' histories)."""


class JobSupervision:
    """The controller's watch over running jobs (see the module's docstring)."""

    def __init__(self, metrics: Any | None = None) -> None:
        self._hangs = supervise.HangWatch()
        self._faults_recorded: set[tuple[str, str, str]] = set()  # (job, submission, instance)
        self._history_tails: dict[str, Any] = {}  # job -> history.Tail (goodput metrics)
        self._published_notices: Mapping[str, float] = {}
        self._watched = time.monotonic()  # first resubmission check one period after a (re)start
        self._metrics = metrics if metrics is not None else JobMetrics()

    def acknowledged(self, client: Any, runtime: Mapping[str, Any], notices: Mapping[str, float]) -> frozenset[str]:
        if not notices:
            return frozenset()
        try:
            beats = supervise.running(supervise.read_beats(client), runtime.get("storage"))
            return supervise.acknowledged(notices, beats, supervise.read_acks(client))
        except Exception as error:
            log.info("notice acknowledgements not read: %s", error)
            return frozenset()

    def after(self, done: Pass) -> None:
        try:
            self._supervise(done)
        except Exception as error:
            log.info("job supervision skipped: %s", error)
        if time.monotonic() - self._watched >= WATCH_PERIOD_S:
            self._watched = time.monotonic()
            self._watch(done)

    def _supervise(self, done: Pass) -> None:
        if done.notices != self._published_notices:
            supervise.publish_notices(done.client, done.notices)
            self._published_notices = dict(done.notices)
        storage = done.runtime.get("storage")
        if not storage:
            return
        instance_of = {r.node_id: r.instance for r in done.state.nodes.values() if r.node_id}
        beats = supervise.read_beats(done.client)
        failed = {e.instance: e for e in done.events if e.kind in FAULT_KINDS and e.instance}
        if failed:
            node_of = {r.instance: r.node_id for r in done.state.nodes.values() if r.node_id}
            for job, instance, submission in supervise.jobs_on(beats, {i: node_of.get(i) for i in failed}):
                if (job, submission, instance) not in self._faults_recorded:
                    self._faults_recorded.add((job, submission, instance))
                    history.record(storage, job, "fault", submission_id=submission, instance=instance,
                                   reason=failed[instance].message)
        held = supervise.holding(beats, supervise.read_acks(done.client), done.now) if done.notices else frozenset()
        for job, hang, folder in self._hangs.check(beats, storage, done.agent, done.now, held):
            # only a culprit's node is named (and so counted against); a rank killed only to unblock
            # the job, when the evidence did not decide, names no node
            culprits = [instance_of.get(node_id, node_id[:12]) for node_id in hang.culprit_nodes]
            where = f" on {', '.join(culprits)}" if culprits else ""
            done.record([Event(done.now, "hang", f"job {job}: {hang.reason}{where}; stacks in {folder}; "
                               "restarting it from its checkpoint", instance=culprits[0] if len(culprits) == 1 else None,
                               reason="no progress")])

    def _watch(self, done: Pass) -> None:
        """Resubmit jobs whose driver died (jobs/supervision/resubmit.py); any error skips this
        round, never resubmits: a job table that cannot be read says nothing about the jobs."""
        storage, dashboard = done.runtime.get("storage"), done.runtime.get("dashboard_url")
        if not storage or not dashboard:
            return
        try:
            from ray.job_submission import JobSubmissionClient

            client = JobSubmissionClient(dashboard)
            ray_jobs = {info.submission_id: str(info.status.value) for info in client.list_jobs()
                        if info.submission_id}
            dead = resubmit.dead_drivers(gcs.actors(done.client))
            for orphan in resubmit.orphans(storage, ray_jobs, dead, fleet=done.spec.name):
                submitted = resubmit.resubmit(client, storage, orphan, python_for(done.spec.capabilities),
                                              fleet=done.spec.name)
                kind, message = ("resubmit", f"job {orphan.job} lost its driver; resubmitted as {submitted}") \
                    if submitted else ("failed", f"job {orphan.job} lost its driver too often; given up")
                done.record([Event(time.time(), kind, message, reason="driver lost")])
        except Exception as error:
            log.info("job watch skipped: %s", error)
        try:
            self._metrics.record(done.spec.name, goodput.recent(storage, time.time(), self._history_tails))
        except Exception as error:
            log.info("job goodput not published: %s", error)


class JobMetrics:
    """Each job's ETTR and wall time by part, published through `ray.util.metrics` from the
    controller's process (the fleet's metrics are in cluster/loop/metrics.py)."""

    def __init__(self, metrics: Any | None = None) -> None:
        if metrics is None:
            from ray.util import metrics
        self._ettr = metrics.Gauge("rayfleet_job_ettr", "effective training time ratio: kept training "
                                   "time over wall time", tag_keys=("fleet", "job"))
        self._seconds = metrics.Gauge("rayfleet_job_seconds", "a job's wall time by part (waiting, startup, "
                                      "training, rollback, checkpoint, detection, recovery)",
                                      tag_keys=("fleet", "job", "part"))

    def record(self, fleet: str, figures_by_job: Mapping[str, Mapping[str, Any]]) -> None:
        """Publish each job's figures (job -> Goodput.to_json())."""
        for job, figures in figures_by_job.items():
            if figures.get("ettr") is not None:
                self._ettr.set(float(figures["ettr"]), tags={"fleet": fleet, "job": job})
            for part, seconds in figures.get("parts", {}).items():
                self._seconds.set(float(seconds), tags={"fleet": fleet, "job": job, "part": part})
