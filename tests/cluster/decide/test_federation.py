"""Federation placement and moves: one rule per test, each with the reason it leaves for every cell."""
from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from rayfleet.cluster.decide.federation import (STEPPING_S, CellHealth, CellView, FederationPolicy, JobAsk, Placement,
                                                PoolCapacity, Verdict, WatchedJob, cell_view, decide_move, moves_due,
                                                note_lost, place, place_all, placement_event)
from tests.support.cells import cell

JOB = JobAsk("train", "h100", workers=4)


def verdicts(placement: Placement) -> dict[str, tuple[Verdict, str]]:
    return {r.cell: (r.verdict, r.why) for r in placement.reasons}


def test_a_job_goes_to_the_cell_with_the_most_free_nodes_of_its_pool() -> None:
    placement = place(JOB, [cell("a", free=5), cell("b", free=9), cell("c", free=4)])
    assert (placement.cell, placement.nodes, placement.grow_by) == ("b", 4, 0)
    why = verdicts(placement)
    assert why["b"][0] is Verdict.CHOSEN and "9 free nodes for 4 (32 GPUs)" in why["b"][1]
    assert why["a"] == (Verdict.PASSED_OVER, why["a"][1]) and "b ranks first: more free nodes" in why["a"][1]


def test_workers_per_node_sets_the_nodes_a_gang_needs() -> None:
    job = JobAsk("train", "h100", workers=9, workers_per_node=4)
    assert job.nodes == 3
    assert place(job, [cell("a", free=2), cell("b", free=3)]).cell == "b"


def test_a_gang_never_spans_cells_it_waits_for_growth_or_is_refused() -> None:
    big = JobAsk("big", "h100", workers=10)
    placement = place(big, [cell("a", free=6), cell("b", free=6)])  # 12 free together, 6 in each
    assert placement.cell is None
    assert all(v == Verdict.REFUSED and "the job needs 10" in why for v, why in verdicts(placement).values())


def test_free_nodes_now_come_before_a_pool_that_must_grow() -> None:
    placement = place(JOB, [cell("a", free=3, nodes=3, max_nodes=100), cell("b", free=4)])
    assert placement.cell == "b"
    assert "it fits on free nodes now" in verdicts(placement)["a"][1]


def test_a_pool_that_can_grow_takes_the_job_and_says_how_many_nodes_it_launches() -> None:
    placement = place(JOB, [cell("a", free=1, nodes=5, max_nodes=8), cell("b", free=0, nodes=5, max_nodes=6)])
    assert (placement.cell, placement.grow_by) == ("a", 3)
    assert "must launch 3 nodes first" in verdicts(placement)["a"][1]
    assert verdicts(placement)["b"][0] is Verdict.REFUSED  # 0 free + 1 room < 4


def test_with_equal_free_nodes_a_fault_tolerant_head_wins() -> None:
    placement = place(JOB, [cell("a", free=8), cell("b", free=8, fault_tolerance=True)])
    assert placement.cell == "b"
    assert "ranks first: head fault tolerance" in verdicts(placement)["b"][1]


def test_free_capacity_outranks_health() -> None:
    assert place(JOB, [cell("a", free=9), cell("b", free=8, fault_tolerance=True)]).cell == "a"


def test_a_cell_with_its_head_lost_or_without_the_pool_is_refused() -> None:
    placement = place(JOB, [cell("a", free=50, alive=False, lost_since=12.0), cell("b", free=50, pool="a100"),
                            cell("c", free=4)])
    why = verdicts(placement)
    assert placement.cell == "c" and "the only cell that can run it" in why["c"][1]
    assert why["a"] == (Verdict.REFUSED, "head lost since t=12")
    assert why["b"] == (Verdict.REFUSED, "no pool h100")


def test_ties_break_by_name_whatever_the_order_of_the_views() -> None:
    cells = [cell("c", free=8), cell("a", free=8), cell("b", free=8)]
    for order in itertools.permutations(cells):
        placement = place(JOB, list(order))
        assert placement.cell == "a"
        assert "a ranks first: name order (a tie)" in verdicts(placement)["b"][1]


def test_no_cells_no_placement() -> None:
    assert place(JOB, []).cell is None


def test_placing_many_jobs_spends_each_cells_free_nodes() -> None:
    jobs = [JobAsk(f"j{i}", "h100", workers=4) for i in range(5)]
    placements, after = place_all(jobs, [cell("a", free=8), cell("b", free=12)])
    assert [p.cell for p in placements] == ["b", "a", "b", "a", "b"]
    assert {c.name: c.pools["h100"].free_nodes for c in after} == {"a": 0, "b": 0}
    assert place(JOB, after).cell is None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 10), st.booleans(), st.booleans()), min_size=1,
                max_size=6), st.integers(1, 20))
def test_the_chosen_cell_can_hold_the_gang_and_none_ranks_above_it(cells: list[tuple[int, int, bool, bool]],
                                                                   workers: int) -> None:
    views = [cell(f"c{i}", free=free, nodes=free, max_nodes=free + room, fault_tolerance=ft, alive=alive,
                  lost_since=0.0)
             for i, (free, room, ft, alive) in enumerate(cells)]
    job = JobAsk("j", "h100", workers)
    placement = place(job, views)
    able = [v for v in views
            if v.health.head_alive and v.pools["h100"].free_nodes + v.pools["h100"].room_to_grow >= workers]
    assert (placement.cell is None) == (not able)
    assert len(placement.reasons) == len(views)
    if placement.cell is not None:
        chosen = next(v for v in able if v.name == placement.cell)
        key = lambda v: (v.pools["h100"].free_nodes < workers, -v.pools["h100"].free_nodes,  # noqa: E731
                         not v.health.fault_tolerance, v.name)
        assert key(chosen) == min(key(v) for v in able)


POLICY = FederationPolicy(head_lost_wait_s=60, fault_tolerant_wait_s=240)


def test_a_job_stays_while_its_cell_can_run_it() -> None:
    move = decide_move(JOB, "a", [cell("a", free=0, nodes=4), cell("b", free=8)], POLICY, now=100.0)
    assert (move.leaves, move.placement) == (False, None)


def test_a_lost_head_without_fault_tolerance_moves_its_jobs_after_the_policys_wait() -> None:
    cells = [cell("a", free=0, nodes=4, alive=False, lost_since=100.0), cell("b", free=8), cell("c", free=5)]
    assert not decide_move(JOB, "a", cells, POLICY, now=159.0).leaves
    move = decide_move(JOB, "a", cells, POLICY, now=160.0)
    assert move.leaves and "without fault tolerance" in move.why and "60 s" in move.why
    assert move.placement is not None and move.placement.cell == "b"
    assert {r.cell for r in move.placement.reasons} == {"b", "c"}  # never back onto the lost cell


def test_a_fault_tolerant_head_gets_the_longer_wait() -> None:
    cells = [cell("a", free=0, nodes=4, alive=False, lost_since=100.0, fault_tolerance=True), cell("b", free=8)]
    assert not decide_move(JOB, "a", cells, POLICY, now=339.0).leaves
    assert decide_move(JOB, "a", cells, POLICY, now=340.0).leaves


def test_a_pool_gone_from_the_cell_or_a_cell_gone_moves_the_job_at_once() -> None:
    gone_pool = decide_move(JOB, "a", [cell("a", free=8, pool="a100"), cell("b", free=8)], POLICY, now=0.0)
    assert gone_pool.leaves and "no longer has pool h100" in gone_pool.why and gone_pool.placement.cell == "b"
    gone_cell = decide_move(JOB, "x", [cell("b", free=8)], POLICY, now=0.0)
    assert gone_cell.leaves and "no longer in the fleet" in gone_cell.why


def test_a_move_with_nowhere_to_go_leaves_the_job_waiting() -> None:
    cells = [cell("a", free=0, nodes=4, alive=False, lost_since=0.0), cell("b", free=2)]
    move = decide_move(JOB, "a", cells, POLICY, now=1000.0)
    assert move.leaves and move.placement is not None and move.placement.cell is None


def test_views_are_values_placement_does_not_change_them() -> None:
    views = (CellView("a", {"h100": PoolCapacity(8, 8, 8, 8)}),)
    place_all([JOB, JOB], views)
    assert views[0].pools["h100"].free_nodes == 8


def _status(ready: int, spares: int = 0, desired: int = 2, max_nodes: int = 4) -> dict:
    nodes = [{"pool": "h100", "state": "ready", "spare": i >= ready} for i in range(ready + spares)]
    nodes.append({"pool": "h100", "state": "starting", "spare": False})
    return {"pools": [{"name": "h100", "desired": desired, "max": max_nodes, "gpus_per_node": 8}], "nodes": nodes}


def test_a_cells_view_counts_ready_nodes_less_those_its_unfinished_jobs_hold() -> None:
    view = cell_view("a", _status(ready=2, spares=1), {"alive": True, "fault_tolerant": True}, {"h100": 1})
    assert view.pools["h100"] == PoolCapacity(free_nodes=1, nodes=2, max_nodes=4, gpus_per_node=8)
    assert view.health == CellHealth(True, True)
    assert cell_view("a", _status(ready=1), None, {"h100": 3}).pools["h100"].free_nodes == 0


def test_a_cell_without_status_or_with_a_lost_head_is_refused() -> None:
    job = JobAsk("j", "h100", 1)
    lost = cell_view("a", _status(ready=2), {"alive": False, "fault_tolerant": False, "lost_at": 5.0}, {})
    silent = cell_view("b", None, None, {})
    placement = place(job, [lost, silent, cell_view("c", _status(ready=1), None, {})])
    assert placement.cell == "c"
    assert {r.cell: r.verdict for r in placement.reasons} == {"a": Verdict.REFUSED, "b": Verdict.REFUSED,
                                                              "c": Verdict.CHOSEN}
    assert lost.health.lost_since == 5.0


# The mover's round (rayfleet/cli/mover.py): which of the federation's unfinished jobs move now.
LOST_A = [cell("a", free=0, nodes=2, alive=False, lost_since=100.0), cell("b", free=1, max_nodes=1),
          cell("c", free=1, max_nodes=1)]


def test_the_jobs_of_a_lost_cell_move_after_the_wait_each_to_the_room_the_moves_before_it_left() -> None:
    jobs = [WatchedJob(JobAsk(name, "h100", 1), "a") for name in ("j1", "j2", "j3")]
    assert moves_due(jobs, LOST_A, POLICY, now=159.0) == []
    moves = moves_due(jobs, LOST_A, POLICY, now=160.0)
    assert [(m.job, m.placement.cell) for m in moves] == [("j1", "b"), ("j2", "c"), ("j3", None)]
    assert all(m.leaves and "lost for 60 s" in m.why for m in moves)
    assert {r.verdict for r in moves[2].placement.reasons} == {Verdict.REFUSED}  # it waits, saying why


def test_a_lost_cell_whose_view_has_no_pools_waits_out_the_policy_like_any_lost_head() -> None:
    lost = cell_view("a", None, {"alive": False, "fault_tolerant": False, "lost_at": 100.0}, {})
    assert lost.pools == {}  # its head does not answer: nothing says which pools it has
    job = [WatchedJob(JobAsk("j", "h100", 1), "a")]
    assert moves_due(job, [lost, cell("b", free=1)], POLICY, now=159.0) == []
    [move] = moves_due(job, [lost, cell("b", free=1)], POLICY, now=160.0)
    assert "head (without fault tolerance) has been lost for 60 s" in move.why


def test_a_job_on_a_cell_that_runs_it_or_still_stepping_does_not_move() -> None:
    stays = WatchedJob(JobAsk("b-job", "h100", 1), "b")
    stepping = WatchedJob(JobAsk("fresh", "h100", 1), "a", last_step_at=500.0 - STEPPING_S + 1)
    quiet = WatchedJob(JobAsk("quiet", "h100", 1), "a", last_step_at=500.0 - STEPPING_S)
    assert [m.job for m in moves_due([stays, stepping, quiet], LOST_A, POLICY, now=500.0)] == ["quiet"]


def test_a_head_lost_without_a_recorded_time_is_timed_from_when_the_watcher_first_saw_it() -> None:
    silent = [cell("a", free=0, nodes=1, alive=False), cell("b", free=1)]  # no supervisor time
    views, seen = note_lost(silent, {}, now=10.0)
    assert seen == {"a": 10.0} and views[0].health.lost_since == 10.0
    views, seen = note_lost(silent, seen, now=50.0)
    assert views[0].health.lost_since == 10.0
    job = [WatchedJob(JobAsk("j", "h100", 1), "a")]
    assert moves_due(job, views, POLICY, now=69.0) == [] and len(moves_due(job, views, POLICY, now=70.0)) == 1
    recorded = [cell("a", free=0, nodes=1, alive=False, lost_since=3.0)]
    assert note_lost(recorded, seen, now=50.0)[0][0].health.lost_since == 3.0  # the supervisor's time wins
    assert note_lost([cell("a", free=1)], seen, now=60.0)[1] == {}  # back: its clock is forgotten


def test_a_move_and_a_placement_read_back_as_events_with_their_reasons() -> None:
    placed = {"job": "j", "cell": "a", "submission_id": "j-1", "pool": "h100", "at": 5.0,
              "reasons": [{"cell": "a", "verdict": "chosen", "why": "fits on free nodes now"}]}
    event = placement_event(placed)
    assert (event.kind, event.pool, event.reason) == ("place", "h100", "fits on free nodes now")
    moved = {**placed, "cell": "b", "submission_id": "j-2", "why": "cell a's head ... over the 60 s",
             "moved_from": {"cell": "a", "cell_fleet": "f-a", "submission_id": "j-1"}}
    event = placement_event(moved)
    assert event.kind == "move" and "moved from cell a to cell b as j-2" in event.message
    assert event.reason == "cell a's head ... over the 60 s"
