"""Reading what Ray exports to Prometheus, as a Prometheus server would: the text format of a
node's metrics endpoint (`metrics_export_port` in the GCS node table), parsed by prometheus_client."""
from __future__ import annotations

import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from rayfleet.cluster.rayio import gcs
from rayfleet.names import INSTANCE_LABEL
from tests.support.fleet import Fleet, gcs_client

Samples = list[tuple[str, dict[str, str], float]]


def export_ports(fleet: Fleet) -> dict[str, int]:
    """'head' or the node's instance id -> its metrics export port, read straight from the GCS."""
    ports = {}
    for info in gcs_client(fleet).get_all_node_info(timeout=10).values():
        if info.state == gcs.ALIVE:
            labels = dict(info.labels)
            ports[labels.get(INSTANCE_LABEL, "head")] = int(info.metrics_export_port)
    return ports


def scrape(port: int) -> Samples:
    """Every sample at 127.0.0.1:port (local fleets: the agents listen on every interface)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return [(sample.name, dict(sample.labels), sample.value)
            for family in text_string_to_metric_families(text) for sample in family.samples]


def value(samples: Samples, name: str, **labels: Any) -> float | None:
    """The one sample of `name` whose labels include `labels` (None if absent; ambiguity fails)."""
    found = [v for n, l, v in samples if n == name and all(l.get(k) == str(w) for k, w in labels.items())]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else None
