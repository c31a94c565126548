"""A simulated cell's view for the federation: free nodes, nodes held, the ceiling, head health."""
from __future__ import annotations

from rayfleet.cluster.decide.federation import JobAsk, place
from rayfleet.cluster.sim.cells import SimulatedCell
from rayfleet.cluster.sim.simulator import JobState, SimulatedCloud, SimulatedController, SimulatedJob
from tests.support.specs import fleet_spec, h100_pool


def running_cell(name: str, nodes: int, seed: int) -> SimulatedCell:
    spec = fleet_spec(h100_pool(max_nodes=nodes + 2, nodes=nodes), name=name,
                      scaling={"loop_period_s": 1, "upscaling_speed": 1000})
    controller = SimulatedController(spec, SimulatedCloud(boot_s=20, seed=seed))
    controller.run(60, fast=True)
    return SimulatedCell(name, controller)


def test_the_view_counts_free_and_held_nodes_and_the_federation_places_on_it() -> None:
    a, b = running_cell("a", 6, seed=1), running_cell("b", 4, seed=2)
    assert a.view().pools["h100"].free_nodes == 6 and a.view().pools["h100"].nodes == 6
    assert a.view().pools["h100"].max_nodes == 8 and a.view().pools["h100"].gpus_per_node == 8
    job = a.controller.cloud.submit(SimulatedJob("train", "h100", 4, restart_s=5))
    a.controller.run(10, fast=True)
    assert job.state is JobState.RUNNING and a.view().pools["h100"].free_nodes == 2
    assert place(JobAsk("next", "h100", 3), [a.view(), b.view()]).cell == "b"
    b.lose_head(now=b.controller.cloud.now)
    assert not b.view().health.head_alive and place(JobAsk("next", "h100", 3), [a.view(), b.view()]).cell == "a"
