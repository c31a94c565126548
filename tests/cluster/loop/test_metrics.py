"""FleetMetrics against a recording stand-in for ray.util.metrics: what each loop publishes.

That the figures really reach Ray's Prometheus export is tested on a real fleet
(tests/cluster/loop/test_monitoring_on_fleet.py); here: which metric, which tags, which value.
"""
from __future__ import annotations

import types
from collections import defaultdict
from typing import Any

import pytest

from rayfleet.cluster.decide.events import Event
from rayfleet.cluster.loop.metrics import POOL_GAUGES, FleetMetrics, reason_kind

Key = tuple[str, frozenset[tuple[str, str]]]


class Recorder:
    """A module with Gauge, Counter and Histogram that remember what they were given."""

    def __init__(self) -> None:
        self.values: dict[Key, float] = {}
        self.counts: dict[Key, float] = defaultdict(float)
        self.observed: dict[Key, list[float]] = defaultdict(list)
        self.declared: dict[str, tuple[str, ...]] = {}
        recorder = self

        class Metric:
            def __init__(self, name: str, description: str = "", tag_keys: tuple[str, ...] = (),
                         boundaries: list[float] | None = None) -> None:
                assert name not in recorder.declared, f"{name} declared twice"
                recorder.declared[name] = tuple(tag_keys)
                self.name, self.tag_keys = name, tuple(tag_keys)

            def key(self, tags: dict[str, str]) -> Key:
                assert set(tags) == set(self.tag_keys), (self.name, tags)
                return self.name, frozenset(tags.items())

        class Gauge(Metric):
            def set(self, value: float, tags: dict[str, str]) -> None:
                recorder.values[self.key(tags)] = value

        class Counter(Metric):
            def inc(self, value: float, tags: dict[str, str]) -> None:
                recorder.counts[self.key(tags)] += value

        class Histogram(Metric):
            def observe(self, value: float, tags: dict[str, str]) -> None:
                recorder.observed[self.key(tags)].append(value)

        self.module = types.SimpleNamespace(Gauge=Gauge, Counter=Counter, Histogram=Histogram)

    def value(self, name: str, **tags: str) -> float | None:
        return self.values.get((name, frozenset(tags.items())))

    def count(self, name: str, **tags: str) -> float:
        return self.counts.get((name, frozenset(tags.items())), 0.0)


def pool(name: str, **figures: int) -> dict[str, Any]:
    base = {"name": name, "accelerator": "H100", "gpus_per_node": 8, "desired": 0, "ready": 0, "starting": 0,
            "unhealthy": 0, "degraded": 0, "draining": 0, "quarantined": 0, "spares": 0, "spares_ready": 0,
            "min": 0, "max": 4, "gpus_ready": 0}
    return {**base, **figures}


def status(*pools: dict[str, Any], nodes: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"fleet": "f", "pools": list(pools), "nodes": [{"instance": n} for n in nodes]}


def event(kind: str, instance: str | None = None, reason: str = "", pool_name: str = "h100") -> Event:
    return Event(time=0.0, kind=kind, message=f"{kind} {instance}", pool=pool_name, instance=instance, reason=reason)


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


def test_every_pool_gauge_takes_its_figure_from_the_status_document(rec: Recorder) -> None:
    metrics = FleetMetrics(rec.module)
    h100 = pool("h100", desired=3, ready=2, starting=1, unhealthy=1, degraded=1, draining=2, quarantined=1,
                spares=2, spares_ready=1, gpus_ready=16)
    metrics.record(status(h100, pool("a100", desired=1, gpus_per_node=4)), loop_ms=12.0, events=())
    for name, key, _ in POOL_GAUGES:
        assert rec.value(name, fleet="f", pool="h100") == h100[key], name
    assert rec.value("rayfleet_pool_desired_gpus", fleet="f", pool="h100") == 24
    assert rec.value("rayfleet_pool_desired_gpus", fleet="f", pool="a100") == 4
    assert rec.value("rayfleet_pool_ready_nodes", fleet="f", pool="a100") == 0
    assert rec.observed[("rayfleet_reconcile_seconds", frozenset({("fleet", "f")}))] == [0.012]


def test_a_new_loop_overwrites_the_gauges(rec: Recorder) -> None:
    metrics = FleetMetrics(rec.module)
    metrics.record(status(pool("h100", desired=2, ready=2)), 5.0, ())
    metrics.record(status(pool("h100", desired=1, ready=1)), 5.0, ())
    assert rec.value("rayfleet_pool_ready_nodes", fleet="f", pool="h100") == 1


def test_events_count_by_kind_launches_by_reason_and_replacements_by_the_cause_of_the_failure(rec: Recorder) -> None:
    metrics = FleetMetrics(rec.module)
    loop1 = [event("launch", "f-h100-0001", "spec nodes=2"), event("launch", "f-h100-0002", "spec nodes=2"),
             event("launch", "f-h100-0003", "hot_spares=1")]
    metrics.record(status(pool("h100")), 1.0, loop1)
    # the planner's order in one pass: lost (reason: liveness), then replace with the node's free-text reason
    loop2 = [event("lost", "f-h100-0001", "liveness"),
             event("replace", "f-h100-0001", "Ray marked the node dead: killed"),
             event("launch", "f-h100-0004", "manual target 2")]
    metrics.record(status(pool("h100"), nodes=("f-h100-0001",)), 1.0, loop2)
    metrics.record(status(pool("h100")), 1.0, [event("terminated", "f-h100-0001", "Ray marked the node dead")])
    assert rec.count("rayfleet_node_launches", fleet="f", pool="h100", reason="spec_nodes") == 2
    assert rec.count("rayfleet_node_launches", fleet="f", pool="h100", reason="hot_spares") == 1
    assert rec.count("rayfleet_node_launches", fleet="f", pool="h100", reason="manual_target") == 1
    assert rec.count("rayfleet_node_replacements", fleet="f", pool="h100", cause="liveness") == 1
    assert rec.count("rayfleet_remediations", fleet="f", pool="h100", action="replace", cause="liveness") == 1
    assert rec.count("rayfleet_controller_events", fleet="f", pool="h100", kind="launch") == 4
    assert rec.count("rayfleet_controller_events", fleet="f", pool="h100", kind="terminated") == 1


def test_a_remediation_without_a_known_failure_counts_its_own_reason_kind(rec: Recorder) -> None:
    metrics = FleetMetrics(rec.module)
    metrics.record(status(pool("h100")), 1.0, [event("drain", "f-h100-0001", "xid"),
                                               event("replace", "f-h100-0002", "instance gone: no longer listed")])
    assert rec.count("rayfleet_remediations", fleet="f", pool="h100", action="drain", cause="xid") == 1
    assert rec.count("rayfleet_node_replacements", fleet="f", pool="h100", cause="instance_gone") == 1


def test_health_results_count_and_track_failing_nodes_until_they_pass_or_leave(rec: Recorder) -> None:
    metrics = FleetMetrics(rec.module)
    tags = {"fleet": "f", "pool": "h100", "check": "nvml_xid"}
    metrics.record_health("f", "h100", "f-h100-0001", "nvml_xid", passed=False, duration_s=0.02)
    metrics.record_health("f", "h100", "f-h100-0002", "nvml_xid", passed=False)
    metrics.record_health("f", "h100", "f-h100-0003", "nvml_xid", passed=True, duration_s=0.01)
    assert rec.count("rayfleet_health_checks", **tags, result="fail") == 2
    assert rec.count("rayfleet_health_checks", **tags, result="pass") == 1
    assert rec.observed[("rayfleet_health_check_seconds", frozenset(tags.items()))] == [0.02, 0.01]
    assert rec.value("rayfleet_health_failing_nodes", **tags) == 2
    metrics.record_health("f", "h100", "f-h100-0001", "nvml_xid", passed=True)
    assert rec.value("rayfleet_health_failing_nodes", **tags) == 1
    metrics.record(status(pool("h100"), nodes=("f-h100-0001", "f-h100-0003")), 1.0, ())  # 0002 left the fleet
    assert rec.value("rayfleet_health_failing_nodes", **tags) == 0


def test_tags_are_bounded_no_metric_is_tagged_by_node(rec: Recorder) -> None:
    FleetMetrics(rec.module)
    assert all(not {"instance", "node", "node_id"} & set(tags) for tags in rec.declared.values())
    assert all(name.startswith("rayfleet_") for name in rec.declared)


def test_a_broken_metrics_backend_never_stops_the_loop(rec: Recorder, caplog: pytest.LogCaptureFixture) -> None:
    metrics = FleetMetrics(rec.module)
    metrics.record({"fleet": "f"}, 1.0, ())  # no pools: a KeyError inside, logged, not raised
    metrics.record_health("f", "h100", "i", "heartbeat", passed=True, duration_s="slow")  # type: ignore[arg-type]
    assert "metrics not published" in caplog.text


@pytest.mark.parametrize("reason, kind", [
    ("liveness", "liveness"), ("launch", "launch"), ("check:xid", "check:xid"), ("", "unspecified"),
    ("hot_spares=2", "hot_spares"), ("manual target 3", "manual_target"), ("spec nodes=2", "spec_nodes"),
    ("instance gone: the provider no longer lists it", "instance_gone"),
    ("did not join Ray within 120s", "did_not_join_ray"), ("scale down to 1", "scale_down_to"),
])
def test_reason_kinds_are_short_stable_tag_values(reason: str, kind: str) -> None:
    assert reason_kind(reason) == kind


def test_the_real_ray_metrics_accept_every_name_and_tag() -> None:
    FleetMetrics()  # ray.util.metrics validates names and tag keys when a metric is declared
