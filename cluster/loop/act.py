"""Act: apply a plan's actions through the provider and Ray. The only place the loop changes things."""
from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import Any, Sequence

from rayfleet.cluster.rayio import gcs
from rayfleet.cluster.decide.actions import Action, Admit, Drain, Evict, Launch, RunChecks, Terminate, Unadmit, Vacate
from rayfleet.cluster.providers import Provider
from rayfleet.cluster.spec.fleet import FleetSpec
from rayfleet.names import NAMESPACE

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
        elif isinstance(action, Unadmit):
            _resize(client, action.instance, action.node_id, 0.0)
        elif isinstance(action, Vacate):
            _vacate(client, action)
            _cordon(provider, action)
        elif isinstance(action, RunChecks):
            _run_checks(action)
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
    _resize(client, action.instance, action.node_id, float(action.cpus))


def _resize(client: Any, instance: str, node_id: str, cpus: float) -> None:
    """Set the node's CPUs (CPU, unlike GPU, can be resized live): admission gives them, quarantine
    takes them back."""
    try:
        client.resize_raylet_resource_instances(node_id.encode(), {"CPU": cpus}, timeout_s=5)
        log.info("%s now has %s CPUs", instance, cpus)
    except Exception as error:  # the node is going away, or the GCS restarts: logged, re-planned on rejoin
        log.warning("could not resize %s to %s CPUs: %s", instance, cpus, error)


def _cordon(provider: Provider, action: Vacate) -> None:
    """A node quarantined for its hardware: where the provider places nodes on machines it shares
    (Kubernetes), mark that machine unschedulable so no replacement lands on the same bad GPU
    (`kubectl cordon`; a person uncordons it once it is repaired)."""
    cordon = getattr(provider, "cordon", None)
    if cordon is None:
        return
    try:
        cordon(action.instance)
    except Exception as error:  # the quarantine stands; the next replacement may land there
        log.warning("could not cordon the machine under %s: %s", action.instance, error)


def _vacate(client: Any, action: Vacate) -> None:
    """End every actor process on the node but its health agent: training workers die, and Ray
    Train resumes their jobs from checkpoints on other nodes. The GCS names them (and their pids);
    the node's own agent SIGKILLs them (Ray's kill needs a handle that unnamed actors do not give)."""
    import ray

    from rayfleet.cluster.health.agent import agent_name

    try:
        actors = gcs.actors(client)
        agent = ray.get_actor(agent_name(action.instance), namespace=NAMESPACE)
    except Exception as error:
        log.warning("could not vacate %s: %s", action.instance, error)
        return
    for actor_id, info in actors.items():
        if info.address.node_id.hex() != action.node_id or info.state not in (0, 1, 2) or not info.pid:
            continue
        if info.class_name == "HealthAgent" or info.name == agent_name(action.instance):
            continue
        try:
            killed = ray.get(agent.kill.remote(info.pid), timeout=10)
            log.info("ended %s (pid %s) on %s: %s", info.class_name, info.pid, action.instance,
                     action.reason if killed else "it had exited")
        except Exception as error:
            log.info("could not end actor %s: %s", actor_id.hex()[:12], error)


def _run_checks(action: RunChecks) -> None:
    """Ask the node's agent to run its burn and report now (no wait: the report comes by heartbeat)."""
    import ray

    from rayfleet.cluster.health.agent import agent_name

    try:
        agent = ray.get_actor(agent_name(action.instance), namespace=NAMESPACE)
        agent.run_checks.remote()
    except Exception as error:
        log.warning("could not ask %s to run its checks: %s", action.instance, error)


def _evict(client: Any, evictions: Sequence[Evict]) -> None:
    """Declare lost (or drained and terminating) nodes dead in the GCS: their actors fail and
    their placement groups are rescheduled now, not after Ray's own timeout."""
    for action in evictions:
        try:
            gcs.declare_dead(client.address, action.node_id, f"rayfleet: {action.reason}", preempted=action.preempted)
            log.info("declared %s (node %s) dead in the GCS: %s", action.instance, action.node_id[:12], action.reason)
        except Exception as error:  # an already-dead node may be gone from the table; Ray times it out
            log.info("could not declare %s dead: %s", action.instance, error)
