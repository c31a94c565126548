"""The simulator persists through the controller's store: a steady loop writes nothing, an
incident writes the records of the nodes it touched, and a resumed controller reads its state back
and launches nothing."""
from __future__ import annotations

import dataclasses

from rayfleet.cluster.decide.state import NodeState
from rayfleet.cluster.sim.kv import KVTally
from rayfleet.cluster.sim.simulator import SimulatedCloud, SimulatedController, SimulatedJob
from tests.support.specs import fleet_spec, h100_pool


def running(nodes: int) -> SimulatedController:
    spec = fleet_spec(h100_pool(max_nodes=nodes * 2, nodes=nodes), name="p",
                      scaling={"loop_period_s": 1, "upscaling_speed": 1000})
    c = SimulatedController(spec, SimulatedCloud(boot_s=20, seed=5))
    c.cloud.submit(SimulatedJob("train", "h100", nodes, restart_s=10))
    c.run(120, fast=True)
    assert sum(r.state is NodeState.READY for r in c.state.nodes.values()) == nodes
    return c


def loops(c: SimulatedController, count: int) -> KVTally:
    before = dataclasses.replace(c.kv.tally)
    for _ in range(count):
        c.tick()
        c.cloud.advance(c.spec.scaling.loop_period_s)
    return c.kv.tally.since(before)


def test_steady_loops_write_nothing_at_any_size() -> None:
    for nodes in (8, 200):
        assert loops(running(nodes), 20) == KVTally()


def test_an_incident_writes_the_records_of_the_nodes_it_touched_not_the_fleet() -> None:
    written = {}
    for nodes in (20, 200):
        c = running(nodes)
        for name in sorted(c.cloud.nodes)[:2]:
            c.cloud.inject("node", name)
        c.cloud.advance(0.5)
        written[nodes] = loops(c, 1)
        assert 2 <= written[nodes].puts <= 2 * 3 + 1  # the lost nodes, their replacements, the fleet record
    assert written[20].puts == written[200].puts
    assert abs(written[20].bytes - written[200].bytes) < 50


def test_a_resumed_controller_reads_its_state_back_and_launches_nothing() -> None:
    c = running(12)
    c.cloud.inject("node", sorted(c.cloud.nodes)[0])
    c.cloud.advance(0.5)
    c.tick()  # the lost node's record and its replacement's are written before the crash
    launches = c.cloud.launches
    resumed = c.resumed()
    assert resumed.state == c.state
    resumed.run(60)
    assert resumed.cloud.launches == launches
    assert not any(e.kind == "adopt" for e in resumed.events)
    assert sum(r.state is NodeState.READY for r in resumed.state.nodes.values()) == 12
