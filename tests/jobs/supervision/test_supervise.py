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


def two_nodes_stopped_at(t: float) -> dict[str, dict[int, Beat]]:
    """Rank r on node n<r>."""
    return {"j": {r: Beat(rank=r, step=20, time=t, median_step_s=0.3, pid=1000 + r, node_id=f"n{r}",
                          submission_id="s1") for r in range(2)}}


def hang_record(found: list) -> dict:  # type: ignore[type-arg]
    import json

    [(_, _, folder)] = found
    return json.loads((folder / "hang.json").read_text())


def test_only_the_culprits_node_is_blamed_and_a_rank_killed_to_unblock_the_job_is_collateral(
        tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Decided: the stopped rank alone is killed and only its node is named (what the controller's
    `hang` event and anything built on it count against). Undecided (no evidence names a rank):
    every candidate is killed to unblock the job, recorded as collateral, and no node is named."""
    import ray

    monkeypatch.setattr(ray, "get", lambda value, timeout=None: value)
    history.record(tmp_path, "j", "submitted", submission_id="s1", spec=SPEC.model_dump(mode="json"))
    agent = Agent()  # rank 1's process (pid 1001) is stopped
    found = HangWatch().check(two_nodes_stopped_at(100.0), str(tmp_path), lambda node: agent, 120.0)
    [(_, hang, _)] = found
    assert hang.culprit_nodes == ["n1"] and agent.killed == [STOPPED_PID]
    record = hang_record(found)
    assert (record["culprits"], record["killed"], record["collateral"], record["node_id"]) == ([1], [1], [], "n1")

    monkeypatch.setattr(Agent, "__getattr__", lambda self, name: Agent._Call(
        {"inspect": lambda pid: {"state": "sleeping", "marks": None}, "dump_stacks": lambda pid: None,
         "kill": self.killed.append}[name]))
    undecided = Agent()  # nothing tells the ranks apart
    found = HangWatch().check(two_nodes_stopped_at(200.0), str(tmp_path), lambda node: undecided, 220.0)
    [(_, hang, _)] = found
    assert hang.culprit_nodes == [] and hang.rank is None and sorted(undecided.killed) == [1000, 1001]
    record = hang_record(found)
    assert (record["culprits"], record["candidates"], record["collateral"], record["node_id"]) == \
        ([], [0, 1], [0, 1], None)
