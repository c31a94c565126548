"""The controller's watch over jobs on a noticed node (jobs/supervision/supervise.py): a job holding for the notice
is not hung, and a finished job does not hold the notice's acknowledgement back."""
from __future__ import annotations

from pathlib import Path

from rayfleet.jobs.supervision import history
from rayfleet.jobs.supervision.hang import Beat
from rayfleet.jobs.client.spec import JobSpec
from rayfleet.jobs.supervision.supervise import HangWatch, acknowledged, holding, running

SPEC = JobSpec.model_validate({"name": "j", "pool": "h100", "workers": 2, "model": {"preset": "tiny"},
                               "data": {"seq_len": 64, "global_batch": 8}, "steps": 100})


STOPPED_PID = 1001  # rank 1's process: stopped (the evidence names it)


class Agent:
    """A node's health agent as the watch calls it: rank 1's process is stopped, kills are counted."""

    def __init__(self) -> None:
        self.killed: list[int] = []

    class _Call:
        def __init__(self, fn):  # type: ignore[no-untyped-def]
            self.remote = fn

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        calls = {"inspect": lambda pid: {"state": "stopped" if pid == STOPPED_PID else "sleeping", "marks": None},
                 "dump_stacks": lambda pid: "stack", "kill": self.killed.append}
        return Agent._Call(calls[name])


def beats_stopped_at(t: float, submission: str = "s1") -> dict[str, dict[int, Beat]]:
    return {"j": {r: Beat(rank=r, step=20, time=t, median_step_s=0.3, pid=1000 + r, node_id="n1",
                          submission_id=submission) for r in range(2)}}


def test_a_job_holding_for_a_notice_is_not_hung_until_the_deadline(tmp_path: Path, monkeypatch) -> None:
    import ray

    monkeypatch.setattr(ray, "get", lambda value, timeout=None: value)  # the fake agent answers plainly
    history.record(tmp_path, "j", "submitted", submission_id="s1", spec=SPEC.model_dump(mode="json"))
    beats = beats_stopped_at(100.0)  # no step since t=100; the bound is 3 x 0.3 + 10 = 10.9 s
    acks = {"j": {"submission_id": "s1", "step": 20, "deadline": 130.0}}
    agent = Agent()
    now = 125.0  # 25 s without a step, but inside the notice's hold
    assert holding(beats, acks, now) == {"j"}
    assert HangWatch().check(beats, str(tmp_path), lambda node: agent, now, holding(beats, acks, now)) == []
    assert agent.killed == []
    # an acknowledgement of an older submission, or a deadline gone by, holds nothing
    assert holding(beats, {"j": {**acks["j"], "submission_id": "s0"}}, now) == frozenset()
    later = 131.0
    assert holding(beats, acks, later) == frozenset()
    found = HangWatch().check(beats, str(tmp_path), lambda node: agent, later, holding(beats, acks, later))
    assert [job for job, _, _ in found] == ["j"] and agent.killed == [STOPPED_PID]
    assert found[0][1].rank == 1 and found[0][1].attribution.decided_by == "process"


def test_a_finished_job_on_the_noticed_node_does_not_hold_its_acknowledgement(tmp_path: Path) -> None:
    """The noticed node ran an earlier job that has finished (its last beats still name the node) and
    runs one that checkpointed for the notice: the node counts as acknowledged, so it is ended now
    instead of at the notice's deadline."""
    history.record(tmp_path, "old", "submitted", submission_id="s0", spec=SPEC.model_dump(mode="json"))
    history.record(tmp_path, "old", "finished", submission_id="s0", state="SUCCEEDED")
    history.record(tmp_path, "j", "submitted", submission_id="s1", spec=SPEC.model_dump(mode="json"))
    beats = {**beats_stopped_at(100.0), "old": {0: Beat(rank=0, step=60, time=50.0, median_step_s=0.3, pid=1,
                                                         node_id="n1", submission_id="s0")}}
    notices = {"n1": 130.0}
    acks = {"j": {"submission_id": "s1", "step": 20, "deadline": 130.0}}
    assert acknowledged(notices, beats, acks) == frozenset()  # the old job never acknowledges
    assert acknowledged(notices, running(beats, str(tmp_path)), acks) == {"n1"}
    assert set(running(beats, str(tmp_path))) == {"j"}
