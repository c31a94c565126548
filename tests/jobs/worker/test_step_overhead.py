"""What the loop does per step besides the model: compile resolution, buffered step events, and
the notice agreement that runs beside the steps."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rayfleet.jobs.client.spec import JobSpec
from rayfleet.jobs.supervision import goodput, history
from rayfleet.jobs.worker import compilation
from rayfleet.jobs.worker.steplog import StepLog
from rayfleet.names import CUDA_GRAPHS_ENV
from tests.support.distributed import on_ranks


def test_compile_auto_is_eager_on_cpu_and_compiled_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = JobSpec.model_validate({"name": "j", "pool": "p"})
    assert spec.compile == "auto"
    assert not compilation.enabled(spec.compile, torch.device("cpu"))
    assert compilation.enabled("auto", torch.device("cuda"))
    assert not compilation.enabled(False, torch.device("cuda"))
    assert compilation.enabled(True, torch.device("cpu"))
    model = torch.nn.Linear(2, 2)
    assert compilation.forward_of(model, spec.compile, torch.device("cpu")) is model
    assert compilation.cuda_graphs("auto", torch.device("cuda"), world=1)
    assert not compilation.cuda_graphs("auto", torch.device("cuda"), world=2)
    assert not compilation.cuda_graphs("auto", torch.device("cpu"), world=1)
    monkeypatch.setenv(CUDA_GRAPHS_ENV, "0")
    assert not compilation.cuda_graphs("auto", torch.device("cuda"), world=1)
    for old in (True, False):  # job files written before `auto` still load
        assert JobSpec.model_validate({"name": "j", "pool": "p", "compile": old}).compile is old


def test_step_events_are_buffered_and_written_with_their_own_times(tmp_path: Path) -> None:
    now = [0.0]
    log = StepLog(tmp_path, "j", "s1", every_s=1.0, clock=lambda: now[0], wall=lambda: 100.0 + now[0])
    history.record(tmp_path, "j", "submitted", submission_id="s1")
    for step in range(1, 4):
        now[0] += 0.3
        log.step(step, 0.3)
    assert [e["event"] for e in history.events(tmp_path, "j")] == ["submitted"]  # nothing written per step
    now[0] += 0.3
    log.step(4, 0.3)  # a second since the last write: one write of four lines
    steps = [e for e in history.events(tmp_path, "j") if e["event"] == "step"]
    assert [(e["step"], round(e["time"], 6)) for e in steps] == [(1, 100.3), (2, 100.6), (3, 100.9), (4, 101.2)]
    log.step(5, 0.3)
    log.flush()
    assert [e["step"] for e in history.events(tmp_path, "j") if e["event"] == "step"] == [1, 2, 3, 4, 5]


def test_goodput_of_buffered_steps_equals_goodput_of_steps_written_one_by_one(tmp_path: Path) -> None:
    now = [10.0]
    log = StepLog(tmp_path / "a", "j", "s1", every_s=5.0, clock=lambda: now[0], wall=lambda: now[0])
    for folder in ("a", "b"):
        history.record_many(tmp_path / folder, "j", [{"time": 0.0, "event": "submitted", "submission_id": "s1"},
                                                     {"time": 5.0, "event": "started", "submission_id": "s1"}])
    for step in range(1, 9):
        now[0] += 0.5
        log.step(step, 0.5)
        history.record_many(tmp_path / "b", "j", [{"time": now[0], "event": "step", "submission_id": "s1",
                                                   "step": step, "duration_s": 0.5}])
    log.flush()
    a = goodput.of_job(tmp_path / "a", "j", now=20.0)
    b = goodput.of_job(tmp_path / "b", "j", now=20.0)
    assert a is not None and a.to_json() == b.to_json()  # type: ignore[union-attr]


class FixedReader:
    """A node's notice as NoticeReader reports it: one rank's node has one from `from_call` on."""

    def __init__(self, deadline: float, from_call: int) -> None:
        self.deadline_at, self.from_call, self.calls, self.ignored = deadline, from_call, 0, 0.0

    def deadline(self) -> float:
        self.calls += 1
        value = self.deadline_at if self.calls >= self.from_call else 0.0
        return value if value > self.ignored else 0.0

    def ignore_until(self, deadline: float) -> None:
        self.ignored = deadline


def agree(rank: int, world: int) -> list[float]:
    from rayfleet.jobs.worker.notices import NoticeAgreement

    reader = FixedReader(1234.0 if rank == 1 else 0.0, from_call=3)
    agreement = NoticeAgreement(reader, world)  # type: ignore[arg-type]
    seen = []
    for _ in range(6):
        deadline = agreement.poll()
        seen.append(deadline)
        if deadline:
            agreement.handled(deadline)
    agreement.wait()
    return seen


def test_ranks_agree_on_a_notice_one_step_after_one_of_them_read_it() -> None:
    # rank 1 reads the notice at its third poll; every rank acts on it at the fourth, once
    assert on_ranks(2, agree) == [0.0, 0.0, 0.0, 1234.0, 0.0, 0.0]
    assert json.dumps(on_ranks(1, agree)) == json.dumps([0.0] * 6)  # rank 0's node has none
