"""The fleet's metrics, published through `ray.util.metrics` by the controller actor.

Ray exports them on each node's Prometheus endpoint (the node's `metrics_export_port`, the
`ray_` prefix added: `rayfleet_pool_ready_nodes` is scraped as `ray_rayfleet_pool_ready_nodes`),
which is what the dashboard's Metrics view (through Grafana) and any Prometheus read.

| metric                                  | type      | tags                          | from                      |
|-----------------------------------------|-----------|-------------------------------|---------------------------|
| rayfleet_pool_<state>_nodes (1)         | gauge     | fleet, pool                   | the status document       |
| rayfleet_pool_spare_nodes               | gauge     | fleet, pool                   | hot spares joined, idle   |
| rayfleet_pool_desired_spare_nodes       | gauge     | fleet, pool                   | the pool's `hot_spares`   |
| rayfleet_pool_{ready,desired}_gpus      | gauge     | fleet, pool                   | nodes x gpus_per_node     |
| rayfleet_reconcile_seconds              | histogram | fleet                         | one controller loop       |
| rayfleet_controller_events              | counter   | fleet, pool, kind             | every decision (event)    |
| rayfleet_node_launches                  | counter   | fleet, pool, reason           | `launch` events           |
| rayfleet_node_replacements              | counter   | fleet, pool, cause            | `replace` events          |
| rayfleet_remediations                   | counter   | fleet, pool, action, cause    | REMEDIATION_KINDS events  |
| rayfleet_health_checks                  | counter   | fleet, pool, check, result    | `record_health`           |
| rayfleet_health_check_seconds           | histogram | fleet, pool, check            | `record_health`           |
| rayfleet_health_failing_nodes           | gauge     | fleet, pool, check            | `record_health`           |
| rayfleet_health_value                   | gauge     | fleet, pool, check            | `record_reading` (2)      |
| rayfleet_pool_gpu_hours                 | gauge     | fleet, pool, state            | cluster/decide/usage.py   |

(1) <state>: desired, ready, starting, unhealthy, degraded, draining, quarantined (POOL_GAUGES).
(2) a check's reading, the pool's worst node: the highest temperature, power, ECC and XID count,
    the lowest SM clock (gpu.clocks); per-node readings are in `rayfleet health`.

Tags stay bounded (pools, event kinds, check names, reason kinds), never a node or instance id:
a fleet of 12,500 nodes must not make 12,500 series per metric. Per-node detail lives in events
and the controller's log. Job metrics are published by the job's rank 0 (`rayfleet_job_step` and
the rest, jobs/worker/progress.py) and by the job supervision step in the controller's process
(`rayfleet_job_ettr`, `rayfleet_job_seconds`, jobs/supervision/step.py).

Gauges are set again on every loop: Ray drops a gauge that has not been refreshed for two export
intervals (`OpenTelemetryMetricRecorder._resolve_gauge_ttl_seconds`, Ray 2.60), so a stopped
controller's figures disappear instead of freezing at their last value.
"""
from __future__ import annotations

import logging
import re
import threading
from typing import Any, Iterable, Mapping

from rayfleet.cluster.decide.events import Event

log = logging.getLogger("rayfleet.metrics")

POOL_GAUGES: tuple[tuple[str, str, str], ...] = (
    # (metric, key of a pool in the status document, description)
    ("rayfleet_pool_desired_nodes", "desired", "nodes the pool should have (spec or manual target, within min/max)"),
    ("rayfleet_pool_ready_nodes", "ready", "worker nodes joined to Ray and ready (spares not counted)"),
    ("rayfleet_pool_starting_nodes", "starting", "nodes requested or booting"),
    ("rayfleet_pool_unhealthy_nodes", "unhealthy", "nodes failed or suspect, about to be replaced"),
    ("rayfleet_pool_degraded_nodes", "degraded", "nodes working below thresholds, kept and watched"),
    ("rayfleet_pool_draining_nodes", "draining", "nodes draining or terminating"),
    ("rayfleet_pool_quarantined_nodes", "quarantined", "nodes kept out of service for diagnosis"),
    ("rayfleet_pool_spare_nodes", "spares_ready", "hot spares joined and idle"),
    ("rayfleet_pool_desired_spare_nodes", "spares", "hot spares the pool keeps (spec hot_spares)"),
    ("rayfleet_pool_ready_gpus", "gpus_ready", "GPUs on ready worker nodes"),
)

REMEDIATION_KINDS = frozenset({"replace", "drain", "promote", "quarantine", "cordon", "reboot", "reset"})
"""Event kinds that repair the fleet (counted in rayfleet_remediations). Health checks that add a
remediation add its kind here."""

RECONCILE_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""A loop of a small local fleet takes 5-50 ms here; plan() of 12,500 simulated nodes must stay
well inside one loop period (ARCHITECTURE.md), so the buckets reach the 1-10 s periods."""

CHECK_BUCKETS_S = (0.01, 0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 300.0)
"""Passive checks (heartbeat, NVML reads) take milliseconds; active ones (matmul burn, all-reduce
bandwidth) run for tens of seconds to minutes."""

_SLUG = re.compile(r"^[A-Za-z][A-Za-z0-9_.:-]{0,39}$")


def reason_kind(reason: str) -> str:
    """A bounded tag value for a free-text reason.

    A reason that is already a short token (`liveness`, `launch`, `xid`) is kept; a sentence keeps
    its first words before any `:`, `=` or `(`, without numbers: `hot_spares=2` -> `hot_spares`,
    `manual target 3` -> `manual_target`, `instance gone: ...` -> `instance_gone`.
    """
    reason = reason.strip()
    if not reason:
        return "unspecified"
    if _SLUG.match(reason) and "=" not in reason:
        return reason.lower()
    head = re.split(r"[:=(]", reason, maxsplit=1)[0]
    words = re.findall(r"[a-z_]+", head.lower())[:4]
    return "_".join(words)[:40] or "unspecified"


LOWER_IS_WORSE = frozenset({"gpu.clocks", "burn"})
"""Checks whose lowest reading is the pool's worst (an SM clock, achieved TFLOP/s)."""


class FleetMetrics:
    """The controller's metrics. `record` once per loop; `record_health` once per check result.

    Never raises: a metrics failure is logged once and the controller goes on.
    `metrics` is the module providing Gauge, Counter and Histogram (`ray.util.metrics`; tests pass
    a recording fake).
    """

    def __init__(self, metrics: Any | None = None) -> None:
        if metrics is None:
            from ray.util import metrics  # lazily: `cluster` imports Ray only where it runs
        self._lock = threading.Lock()
        self._warned = False
        pool_tags = ("fleet", "pool")
        self._pool = {name: metrics.Gauge(name, doc, tag_keys=pool_tags) for name, _, doc in POOL_GAUGES}
        self._desired_gpus = metrics.Gauge("rayfleet_pool_desired_gpus", "GPUs the pool should have",
                                           tag_keys=pool_tags)
        self._reconcile = metrics.Histogram("rayfleet_reconcile_seconds", "one controller loop: observe, "
                                            "plan, persist, act, publish", boundaries=list(RECONCILE_BUCKETS_S),
                                            tag_keys=("fleet",))
        self._events = metrics.Counter("rayfleet_controller_events", "controller decisions by kind",
                                       tag_keys=("fleet", "pool", "kind"))
        self._launches = metrics.Counter("rayfleet_node_launches", "nodes launched, by reason kind",
                                         tag_keys=("fleet", "pool", "reason"))
        self._replacements = metrics.Counter("rayfleet_node_replacements", "failed nodes replaced, by cause",
                                             tag_keys=("fleet", "pool", "cause"))
        self._remediations = metrics.Counter("rayfleet_remediations", "remediations (replace, drain, "
                                             "quarantine, ...) by action and cause",
                                             tag_keys=("fleet", "pool", "action", "cause"))
        self._checks = metrics.Counter("rayfleet_health_checks", "health-check results",
                                       tag_keys=("fleet", "pool", "check", "result"))
        self._check_seconds = metrics.Histogram("rayfleet_health_check_seconds", "how long a health check ran",
                                                boundaries=list(CHECK_BUCKETS_S), tag_keys=("fleet", "pool", "check"))
        self._failing_gauge = metrics.Gauge("rayfleet_health_failing_nodes", "nodes whose latest result of "
                                            "the check failed", tag_keys=("fleet", "pool", "check"))
        self._gpu_hours = metrics.Gauge("rayfleet_pool_gpu_hours", "GPU-hours since the fleet came up, by "
                                        "node state (training, idle, spare, quarantined, booting, unavailable)",
                                        tag_keys=("fleet", "pool", "state"))
        self._values = metrics.Gauge("rayfleet_health_value", "a health check's reading on the pool's worst node "
                                     "(GPU temperature C, power W, SM clock MHz, ECC and XID counts)",
                                     tag_keys=("fleet", "pool", "check"))
        self._readings: dict[tuple[str, str, str], dict[str, float]] = {}  # (fleet, pool, check) -> instance -> value
        self._causes: dict[str, str] = {}   # instance -> kind of the reason it last failed for
        self._failing: dict[tuple[str, str, str], set[str]] = {}   # (fleet, pool, check) -> instances

    # --- the controller's loop ------------------------------------------------------------------
    def record(self, status: Mapping[str, Any], loop_ms: float, events: Iterable[Event]) -> None:
        """Publish one loop: the status document's pools, the loop's latency, its events."""
        try:
            fleet = status["fleet"]
            for pool in status["pools"]:
                tags = {"fleet": fleet, "pool": pool["name"]}
                for name, key, _ in POOL_GAUGES:
                    self._pool[name].set(float(pool.get(key) or 0), tags=tags)
                self._desired_gpus.set(float(pool.get("desired", 0) * pool.get("gpus_per_node", 0)), tags=tags)
            for pool, states in (status.get("gpu_hours") or {}).items():
                if pool != "all":
                    for state, hours in states.items():
                        self._gpu_hours.set(float(hours), tags={"fleet": fleet, "pool": pool, "state": state})
            self._reconcile.observe(loop_ms / 1000.0, tags={"fleet": fleet})
            for event in events:
                self._count(fleet, event)
            live = {node["instance"] for node in status.get("nodes", ())}
            self._causes = {instance: cause for instance, cause in self._causes.items() if instance in live}
            self._refresh_health(fleet, live)
        except Exception as error:  # metrics must never stop the fleet from being reconciled
            self._warn(error)

    def _count(self, fleet: str, event: Event) -> None:
        pool = event.pool or "-"
        self._events.inc(1.0, tags={"fleet": fleet, "pool": pool, "kind": event.kind})
        instance = event.instance or ""
        if event.kind == "launch":
            self._launches.inc(1.0, tags={"fleet": fleet, "pool": pool, "reason": reason_kind(event.reason)})
        elif event.kind in REMEDIATION_KINDS:
            # The cause is why the node failed (the `lost` / `failed` / check event before it),
            # not the remediation's own free-text reason.
            cause = self._causes.get(instance) or reason_kind(event.reason)
            self._remediations.inc(1.0, tags={"fleet": fleet, "pool": pool, "action": event.kind, "cause": cause})
            if event.kind == "replace":
                self._replacements.inc(1.0, tags={"fleet": fleet, "pool": pool, "cause": cause})
        elif event.kind == "terminated":
            self._causes.pop(instance, None)
        elif instance and event.reason and _SLUG.match(event.reason):
            self._causes[instance] = reason_kind(event.reason)

    # --- health checks --------------------------------------------------------------------------
    def record_health(self, fleet: str, pool: str, instance: str, check: str, passed: bool,
                      duration_s: float | None = None) -> None:
        """Publish one health-check result of one node.

        fleet, pool: where the node belongs. instance: the node's instance id (`rayfleet.io/instance`),
        used only to count failing nodes, never as a tag. check: a short, stable name (`heartbeat`,
        `nvml_xid`, `ecc`, `thermal`, `matmul`, `allreduce`, ...): it becomes a tag value.
        passed: whether the result met the pool's thresholds. duration_s: how long the check ran.

        Counts the result (rayfleet_health_checks{result="pass"|"fail"}), observes its duration, and
        keeps rayfleet_health_failing_nodes{check} = nodes whose latest result of `check` failed
        (a node leaving the fleet leaves that count at the next `record`). Safe to call from any
        thread; never raises.
        """
        try:
            self._checks.inc(1.0, tags={"fleet": fleet, "pool": pool, "check": check,
                                        "result": "pass" if passed else "fail"})
            if duration_s is not None:
                self._check_seconds.observe(float(duration_s), tags={"fleet": fleet, "pool": pool, "check": check})
            with self._lock:
                failing = self._failing.setdefault((fleet, pool, check), set())
                if passed:
                    failing.discard(instance)
                else:
                    failing.add(instance)
                count = len(failing)
            self._failing_gauge.set(float(count), tags={"fleet": fleet, "pool": pool, "check": check})
        except Exception as error:
            self._warn(error)

    def record_reading(self, fleet: str, pool: str, instance: str, check: str, value: float) -> None:
        """A check's latest reading on one node; publishes the pool's worst (see the table above)."""
        try:
            with self._lock:
                readings = self._readings.setdefault((fleet, pool, check), {})
                readings[instance] = float(value)
                worst = min(readings.values()) if check in LOWER_IS_WORSE else max(readings.values())
            self._values.set(worst, tags={"fleet": fleet, "pool": pool, "check": check})
        except Exception as error:
            self._warn(error)

    def _refresh_health(self, fleet: str, live: set[str]) -> None:
        with self._lock:
            counts = {}
            for key, failing in self._failing.items():
                if key[0] == fleet:
                    failing &= live
                    counts[key] = len(failing)
            for key, readings in self._readings.items():
                if key[0] == fleet:
                    for gone in set(readings) - live:
                        del readings[gone]
        for (_, pool, check), count in counts.items():
            self._failing_gauge.set(float(count), tags={"fleet": fleet, "pool": pool, "check": check})

    def _warn(self, error: Exception) -> None:
        if not self._warned:
            self._warned = True
            log.warning("metrics not published (the fleet is reconciled regardless): %r", error)
        else:
            log.debug("metrics not published: %r", error)
