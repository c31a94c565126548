"""`act` applies every kind of action through the provider and the GCS (recorded by fakes here:
the real calls run in the fleet tests); a failing call is logged, never raised into the loop."""
from __future__ import annotations

from typing import Any, Sequence

import pytest

from rayfleet.cluster.loop import act as act_module
from rayfleet.cluster.rayio import gcs
from rayfleet.cluster.decide.actions import Action, Admit, Drain, Evict, Launch, RunChecks, Terminate, Unadmit, Vacate
from rayfleet.cluster.spec.fleet import FleetSpec, PoolSpec
from rayfleet.cluster.decide.view import Instance

SPEC = FleetSpec.model_validate({"name": "t", "pools": [{"name": "h100", "accelerator": "H100", "gpus_per_node": 8,
                                                           "cpus_per_node": 4, "max_nodes": 4}]})
NODE = "ab" * 28


class Provider:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.fail = fail

    def launch(self, pool: PoolSpec, names: Sequence[str]) -> list[Instance]:
        self.calls.append(("launch", list(names)))
        if self.fail:
            raise RuntimeError("no capacity")
        return []

    def terminate(self, names: Sequence[str], wait: bool = False) -> None:
        self.calls.append(("terminate", list(names)))


class Client:
    address = "127.0.0.1:1"

    def __init__(self) -> None:
        self.resized: list[tuple[bytes, dict[str, float]]] = []

    def resize_raylet_resource_instances(self, node: bytes, resources: dict[str, float], timeout_s: float) -> None:
        self.resized.append((node, resources))


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    calls: dict[str, list[Any]] = {"drain": [], "dead": [], "vacate": [], "checks": []}
    monkeypatch.setattr(gcs, "drain", lambda client, node, msg, deadline, preemption, now_ms:
                        calls["drain"].append((node, deadline, preemption)) or (True, ""))
    monkeypatch.setattr(gcs, "declare_dead", lambda address, node, msg, preempted=False:
                        calls["dead"].append((node, preempted)))
    monkeypatch.setattr(act_module, "_vacate", lambda client, action: calls["vacate"].append(action.instance))
    monkeypatch.setattr(act_module, "_run_checks", lambda action: calls["checks"].append(action.instance))
    return calls


def test_every_action_kind_reaches_its_edge(recorded: dict[str, list[Any]]) -> None:
    provider, client = Provider(), Client()
    actions: list[Action] = [Launch("h100", "t-h100-0002"), Terminate("h100", "t-h100-0001", "lost"),
                             Drain("h100", "t-h100-0003", NODE, "scale down", 30.0, False),
                             Evict("h100", "t-h100-0001", NODE, "lost", preempted=True),
                             Admit("h100", "t-h100-0004", NODE, 4), Unadmit("h100", "t-h100-0005", NODE),
                             Vacate("h100", "t-h100-0005", NODE, "XID"), RunChecks("h100", "t-h100-0005")]
    errors = act_module.act(actions, provider, SPEC, client)
    assert errors == {}
    assert provider.calls == [("terminate", ["t-h100-0001"]), ("launch", ["t-h100-0002"])]
    assert recorded["drain"] == [(NODE, 30.0, False)] and recorded["dead"] == [(NODE, True)]
    assert client.resized == [(NODE.encode(), {"CPU": 4.0}), (NODE.encode(), {"CPU": 0.0})]
    assert recorded["vacate"] == ["t-h100-0005"] and recorded["checks"] == ["t-h100-0005"]


def test_a_failed_launch_is_reported_per_instance_not_raised(recorded: dict[str, list[Any]]) -> None:
    errors = act_module.act([Launch("h100", "a"), Launch("h100", "b")], Provider(fail=True), SPEC, Client())
    assert errors == {"a": "launch failed: no capacity", "b": "launch failed: no capacity"}
