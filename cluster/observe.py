"""Sync: read the world into a ClusterView. The only place the loop reads Ray and the provider."""
from __future__ import annotations

import logging
from typing import Any, Mapping

from cluster import gcs
from cluster.providers import Provider
from cluster.view import ClusterView

log = logging.getLogger(__name__)


def observe(client: Any, provider: Provider, fleet: str, launch_errors: Mapping[str, str]) -> ClusterView:
    """One observation. A source that fails to answer is None, so the planner leaves alone what
    it cannot see instead of treating every node as gone."""
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
    try:
        demand = gcs.read_demand(client)
    except Exception as error:  # None, not empty: the autoscaler holds instead of removing nodes
        log.warning("could not read Ray's pending demand: %s", error)
        demand = None
    # Busy: Ray's live resource view says RUNNING (resources in use, or busy workers). A Ray Train
    # worker holds its placement-group bundle for its whole life, so every node running one is busy.
    busy = demand.busy_nodes if demand is not None else frozenset()
    return ClusterView(ray_nodes=ray_nodes, instances=instances, launch_errors=dict(launch_errors),
                       busy_nodes=busy, demand=demand)
