"""Act: apply a plan's actions through the provider and Ray. The only place the loop changes things."""
from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import Any, Sequence

from cluster import gcs
from cluster.plan import Action, Drain, Launch, Terminate
from cluster.providers import Provider
from cluster.spec import FleetSpec

log = logging.getLogger(__name__)


def act(actions: Sequence[Action], provider: Provider, spec: FleetSpec, client: Any) -> dict[str, str]:
    """Apply actions: drains, then terminations, then launches. Returns launch errors by instance,
    which the next plan reads (a failed launch backs off instead of being retried at once)."""
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
    return errors


def _drain(client: Any, action: Drain) -> None:
    try:
        accepted, rejection = gcs.drain(client, action.node_id, action.reason, action.deadline_s,
                                        action.preemption, now_ms=int(time.time() * 1000))
        if not accepted:
            log.info("Ray declined to drain %s: %s", action.instance, rejection)
    except Exception as error:  # a node that is already gone cannot be drained; terminate follows
        log.info("drain of %s failed: %s", action.instance, error)
