"""Sync: read the world into a ClusterView. The only place the loop reads Ray and the provider."""
from __future__ import annotations

import logging
import time
from typing import Any, Mapping

from rayfleet.cluster.rayio import gcs
from rayfleet.cluster.decide.demand import Demand, IdleClock
from rayfleet.cluster.providers import Provider
from rayfleet.cluster.decide.view import ClusterView

log = logging.getLogger(__name__)


def observe(client: Any, provider: Provider, fleet: str, launch_errors: Mapping[str, str],
            idle_clock: IdleClock | None = None) -> ClusterView:
    """One observation. A source that fails to answer is None, so the planner leaves alone what
    it cannot see instead of treating every node as gone. `idle_clock` (kept by the controller)
    times idleness on nodes Ray calls RUNNING only because our health agent lives there."""
    try:
        ray_nodes = gcs.read_nodes(client, fleet)
    except Exception as error:  # the GCS may be restarting; the next loop tries again
        log.warning("could not read Ray's node table: %s", error)
        ray_nodes = None
    try:
        instances = tuple(provider.instances())
    except Exception as error:
        log.warning("could not list the provider's instances: %s", error)
        instances = None
    demand, busy = read_demand(client)
    if demand is not None and idle_clock is not None:
        demand = idle_clock.update(demand, time.time())
    return ClusterView(ray_nodes=ray_nodes, instances=instances, launch_errors=dict(launch_errors),
                       busy_nodes=busy, demand=demand)


def read_demand(client: Any) -> tuple[Demand | None, frozenset[str]]:
    """Pending demand, and the nodes running work: Ray's resource view says RUNNING (resources in
    use, or busy workers), or the GCS has a bundle of a placed placement group there. A Ray Train
    worker lives in its gang's bundle, so a node running one is busy by both, by the second the
    moment it lands. Placement groups are read second, so a gang placed between the two reads is
    still seen. If either read fails the demand is None: the autoscaler holds this loop."""
    try:
        demand = gcs.read_demand(client)
        return demand, demand.busy_nodes | gcs.read_gang_nodes()
    except Exception as error:
        log.warning("could not read Ray's pending demand and placement groups: %s", error)
        return None, frozenset()

