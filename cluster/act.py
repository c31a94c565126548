"""Act: apply a plan's actions through the provider and Ray. The only place the loop changes things."""
from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import Any, Sequence

from cluster import gcs
from cluster.plan import Action, Admit, Drain, Evict, Launch, Terminate
from cluster.providers import Provider
from cluster.spec import FleetSpec

log = logging.getLogger(__name__)


def act(actions: Sequence[Action], provider: Provider, spec: FleetSpec, client: Any) -> dict[str, str]:
    """Apply actions: evictions and drains, then terminations, then launches, then admissions.
    Returns launch errors by instance, which the next plan reads (a failed launch backs off
    instead of being retried at once)."""
    evictions = [action for action in actions if isinstance(action, Evict)]
    if evictions:
        _evict(client, evictions)
    for action in actions:
        if isinstance(action, Drain):
            _drain(client, action)
    doomed = [action.instance for action in actions if isinstance(action, Terminate)]
    if doomed:
        try:
            provider.terminate(doomed)
        except Exception as error:  # retried by the plan after TERMINATE_RETRY_S
            log.error("terminate %s failed: %s", doomed, error)
    errors: dict[str, str] = {}
    by_pool: dict[str, list[str]] = defaultdict(list)
    for action in actions:
        if isinstance(action, Launch):
            by_pool[action.pool].append(action.instance)
    for pool_name, names in by_pool.items():
        try:
            provider.launch(spec.pool(pool_name), names)
        except Exception as error:
            log.error("launch of %s in pool %s failed: %s", names, pool_name, error)
            errors.update({name: f"launch failed: {error}" for name in names})
    for action in actions:
        if isinstance(action, Admit):
            _admit(client, action)
    return errors


def _drain(client: Any, action: Drain) -> None:
    """Ask Ray to drain the node; a refusal or failure is logged and the plan's terminate follows."""
    try:
        accepted, rejection = gcs.drain(client, action.node_id, action.reason, action.deadline_s,
                                        action.preemption, now_ms=int(time.time() * 1000))
        if not accepted:
            log.info("Ray declined to drain %s: %s", action.instance, rejection)
    except Exception as error:  # a node that is already gone cannot be drained; terminate follows
        log.info("drain of %s failed: %s", action.instance, error)


def _admit(client: Any, action: Admit) -> None:
    """Resize the node's CPUs to its pool's shape (CPU, unlike GPU, can be resized live)."""
    try:
        client.resize_raylet_resource_instances(action.node_id.encode(), {"CPU": float(action.cpus)}, timeout_s=5)
        log.info("admitted %s with %s CPUs", action.instance, action.cpus)
    except Exception as error:  # the node is going away, or the GCS restarts: logged, re-planned on rejoin
        log.warning("could not admit %s: %s", action.instance, error)


def _evict(client: Any, evictions: Sequence[Evict]) -> None:
    """Declare lost (or drained and terminating) nodes dead in the GCS: their actors fail and
    their placement groups are rescheduled now, not after Ray's own timeout."""
    for action in evictions:
        try:
            gcs.declare_dead(client.address, action.node_id, f"rayfleet: {action.reason}")
            log.info("declared %s (node %s) dead in the GCS: %s", action.instance, action.node_id[:12], action.reason)
        except Exception as error:  # an already-dead node may be gone from the table; Ray times it out
            log.info("could not declare %s dead: %s", action.instance, error)
