"""Goodput accounting over job histories shaped like the ones the worker loop and controller write."""
from __future__ import annotations

from typing import Any

import pytest

from rayfleet.jobs.supervision.goodput import PARTS, account


def ev(time: float, event: str, **fields: Any) -> dict[str, Any]:
    return {"time": time, "event": event, "job": "j", **fields}


def run_steps(start: float, first: int, last: int, step_s: float = 1.0, every: int = 0,
              save_s: float = 0.0) -> tuple[list[dict[str, Any]], float]:
    """Steps first..last of step_s each from `start`, a checkpoint of save_s every `every` steps."""
    out, now = [], start
    for step in range(first, last + 1):
        now += step_s
        out.append(ev(now, "step", step=step, duration_s=step_s))
        if every and step % every == 0:
            now += save_s
            out.append(ev(now, "checkpoint", step=step, duration_s=save_s))
    return out, now


def test_a_clean_run_is_waiting_startup_training_and_checkpoints() -> None:
    steps, last = run_steps(20.0, 1, 10, every=5, save_s=0.5)
    history = [ev(0, "submitted"), ev(2, "driver"), ev(12, "worker"), ev(15, "started", from_step=0),
               *steps, ev(last + 3, "finished", state="SUCCEEDED")]
    got = account(history, now=1e9)
    assert got is not None
    assert got.parts["waiting"] == pytest.approx(12)
    assert got.parts["startup"] == pytest.approx(8 + 3)          # 12 -> first step's start, and teardown
    assert got.parts["training"] == pytest.approx(10)
    assert got.parts["checkpoint"] == pytest.approx(1.0)
    assert got.parts["rollback"] == got.parts["detection"] == got.parts["recovery"] == 0
    assert sum(got.parts.values()) == pytest.approx(got.wall_s) == pytest.approx(last + 3)
    assert got.ettr == pytest.approx(10 / (last + 3))
    assert got.faults == ()


def test_a_node_loss_splits_into_rollback_detection_and_recovery() -> None:
    first, end1 = run_steps(10.0, 1, 8, every=5)            # dies after step 8; checkpoint at 5
    second, end2 = run_steps(end1 + 20.0, 6, 10, every=5)   # resumes from 5: steps 6-8 redone
    history = [ev(0, "submitted"), ev(5, "worker"), ev(6, "started", from_step=0), *first,
               ev(end1 + 2.0, "fault", reason="node lost"), ev(end1 + 9.0, "worker"),
               ev(end1 + 12.0, "started", from_step=5), *second, ev(end2, "finished", state="SUCCEEDED")]
    got = account(history, now=1e9)
    assert got is not None
    assert got.steps_redone == 3
    assert got.parts["rollback"] == pytest.approx(3)
    assert got.parts["training"] == pytest.approx(10)     # steps 1-5 of the first attempt, 6-10 of the second
    assert got.parts["detection"] == pytest.approx(2)
    assert got.parts["recovery"] == pytest.approx(18)     # detection -> the second attempt's first step
    assert sum(got.parts.values()) == pytest.approx(got.wall_s)
    assert got.faults[0]["steps_redone"] == 3 and got.faults[0]["reason"] == "node lost"
    assert got.faults[0]["first_step_after_s"] == pytest.approx(21)


def test_without_a_recorded_detection_the_gap_until_the_restart_is_detection() -> None:
    first, end1 = run_steps(1.0, 1, 4, every=2)
    second, end2 = run_steps(end1 + 30.0, 5, 6)
    history = [ev(0, "submitted"), ev(1, "started", from_step=0), *first, ev(end1 + 25.0, "worker"),
               ev(end1 + 26.0, "started", from_step=4), *second, ev(end2, "finished", state="SUCCEEDED")]
    got = account(history, now=1e9)
    assert got is not None
    assert got.parts["detection"] == pytest.approx(25)
    assert got.parts["recovery"] == pytest.approx(5)
    assert got.steps_redone == 0
    assert sum(got.parts.values()) == pytest.approx(got.wall_s)


def test_a_stuck_step_that_finishes_as_the_hang_is_handled_still_names_the_hang() -> None:
    first, end1 = run_steps(1.0, 1, 6, every=5)
    stuck = end1 + 12.0  # step 7 stalled 12 s; the hang was recorded just before it finished
    history = [ev(0, "submitted"), ev(1, "started", from_step=0), *first,
               ev(stuck - 0.01, "hang", reason="rank 1 made no progress"), ev(stuck, "step", step=7, duration_s=12.0),
               ev(stuck + 2, "worker"), ev(stuck + 3, "started", from_step=5)]
    second, end2 = run_steps(stuck + 3, 6, 8)
    got = account([*history, *second, ev(end2, "finished", state="SUCCEEDED")], now=1e9)
    assert got is not None
    assert [f["reason"] for f in got.faults] == ["rank 1 made no progress"]
    assert got.steps_redone == 2 and sum(got.parts.values()) == pytest.approx(got.wall_s)


def test_a_notice_loses_no_step() -> None:
    first, end1 = run_steps(1.0, 1, 7, every=5)
    history = [ev(0, "submitted"), ev(1, "started", from_step=0), *first,
               ev(end1 + 0.5, "checkpoint", step=7, duration_s=0.5), ev(end1 + 0.6, "notice", reason="notice"),
               ev(end1 + 10, "worker"), ev(end1 + 11, "started", from_step=7)]
    second, end2 = run_steps(end1 + 12, 8, 10)
    got = account([*history, *second, ev(end2, "finished", state="SUCCEEDED")], now=1e9)
    assert got is not None
    assert got.steps_redone == 0 and got.parts["rollback"] == 0
    assert got.parts["detection"] == pytest.approx(0.1)
    assert got.parts["checkpoint"] == pytest.approx(0.5)
    assert sum(got.parts.values()) == pytest.approx(got.wall_s)


def test_a_running_job_is_accounted_up_to_now_and_a_resubmitted_driver_continues_the_run() -> None:
    steps, last = run_steps(3.0, 1, 3)
    history = [ev(0, "submitted"), ev(1, "submitted", after_lost_driver=True), ev(2, "started", from_step=0),
               *steps]
    got = account(history, now=last + 0.4)
    assert got is not None
    assert got.wall_s == pytest.approx(last + 0.4)
    assert sum(got.parts.values()) == pytest.approx(got.wall_s)
    assert set(got.parts) == set(PARTS)
    # a new submission of the same name starts a new account
    again = account([*history, ev(100, "submitted")], now=110)
    assert again is not None and again.parts["waiting"] == pytest.approx(10) and again.attempts == 0


def test_before_submission_there_is_nothing_to_account() -> None:
    assert account([], now=5) is None


def test_a_history_tail_reads_only_complete_new_lines(tmp_path) -> None:
    from rayfleet.jobs.supervision import history
    from rayfleet.jobs.supervision.goodput import recent

    history.record(tmp_path, "j", "submitted", submission_id="s")
    tails: dict = {}
    first = recent(tmp_path, now=1e12, tails=tails, within_s=1e12)
    assert first["j"]["attempts"] == 0
    path = history.job_dir(tmp_path, "j") / history.FILE
    with open(path, "a") as handle:
        handle.write('{"time": 1e12, "event": "started", "from_step": 0}\n{"time": 1e12, "ev')  # mid-write
    assert recent(tmp_path, now=1e12, tails=tails, within_s=1e12)["j"]["attempts"] == 1
    assert len(tails["j"].events) == 2  # the cut line is not taken yet
    with open(path, "a") as handle:
        handle.write('ent": "step", "step": 1, "duration_s": 0.5}\n')
    assert [e["event"] for e in tails["j"].read()] == ["submitted", "started", "step"]


def test_the_step_that_compiled_is_its_own_part() -> None:
    """A compiled attempt's first step (compilation plus one step) counts as compile, not training."""
    steps, last = run_steps(20.0, 1, 4)
    steps[0]["duration_s"] = 1.0
    history = [ev(0, "submitted"), ev(12, "worker"), ev(15, "started", from_step=0), *steps,
               ev(steps[0]["time"] + 0.01, "compiled", step=1, duration_s=1.0),
               ev(last + 1, "finished", state="SUCCEEDED")]
    got = account(history, now=1e9)
    assert got is not None
    assert got.parts["compile"] == pytest.approx(1.0)
    assert got.parts["training"] == pytest.approx(3.0)
    assert sum(got.parts.values()) == pytest.approx(got.wall_s)
    assert "compile" in got.to_json()["parts"] and "training" in got.to_json()["parts"]
