"""Each rank's collectives from PyTorch's flight recorder, on real gloo process groups: the rank
that never entered the collective the other waits in is named, whether it sleeps (it answers,
one collective behind) or is stopped (it cannot answer)."""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import socket
import time
from typing import Any, Iterator

import pytest

from rayfleet.cluster.health import flight_recorder
from rayfleet.jobs.supervision.attribution import RankEvidence, by_collectives
from tests.conftest import wait_until


def _rank(rank: int, port: int, ready: Any, behaviour: str) -> None:
    import threading

    import torch
    import torch.distributed as dist

    os.environ[flight_recorder.BUFFER_ENV] = "100"  # as the job's environment sets it
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    responder = flight_recorder.Responder()
    tensor = torch.ones(8)
    for _ in range(3):
        dist.all_reduce(tensor)
    ready.put((rank, os.getpid()))
    if rank == 0:
        dist.all_reduce(tensor)  # waits: rank 1 never joins
    elif behaviour == "sleep":
        time.sleep(3600)  # a Python sleep in its step: alive, answering, one collective behind
    threading.Event().wait()  # "stop": the test SIGSTOPs it here
    responder.close()


@pytest.fixture(params=["sleep", "stop"])
def ranks(request: pytest.FixtureRequest) -> Iterator[tuple[str, dict[int, int]]]:
    context = mp.get_context("fork")
    ready = context.Queue()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [context.Process(target=_rank, args=(r, port, ready, request.param), daemon=True) for r in range(2)]
    for proc in procs:
        proc.start()
    try:
        pids = dict(ready.get(timeout=120) for _ in range(2))
        yield request.param, pids
    finally:
        for proc in procs:
            if proc.pid and proc.is_alive():
                os.kill(proc.pid, signal.SIGKILL)
            proc.join(timeout=10)


def test_the_rank_that_never_entered_the_awaited_collective_is_named(ranks: tuple[str, dict[int, int]]) -> None:
    behaviour, pids = ranks
    if behaviour == "stop":
        os.kill(pids[1], signal.SIGSTOP)

    def waiting() -> dict[str, Any] | None:
        seen = flight_recorder.read(pids[0])
        entries = seen.get("entries") or []
        return seen if entries and not entries[-1]["retired"] else None

    seen0 = wait_until(waiting, 60, "rank 0 waiting in its fourth collective")
    seen1 = flight_recorder.read(pids[1], timeout_s=1.0)
    assert seen1["answered"] is (behaviour == "sleep"), seen1
    found = by_collectives({r: RankEvidence(rank=r, pid=pids[r], node_id="n", collectives=seen)
                            for r, seen in ((0, seen0), (1, seen1))})
    assert found.culprits == (1,), found
    assert found.saw[0].startswith("waits in gloo:all_reduce #")
    assert found.saw[1] == ("did not answer" if behaviour == "stop" else f"newest gloo:all_reduce #{seen0['entries'][-1]['seq'] - 1}, done")
    # a read leaves no request or answer behind, and a dead rank's leftovers are swept
    assert not flight_recorder.request_path(pids[1]).exists() and not flight_recorder.answer_path(pids[0]).exists()
    flight_recorder.request_path(pids[1]).touch()
    os.kill(pids[1], signal.SIGKILL)
    wait_until(lambda: flight_recorder.sweep() and not flight_recorder.request_path(pids[1]).exists(), 30,
               "the killed rank's request swept")


def test_a_cuda_builds_nccl_recorder_is_read_before_the_generic_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """NCCL records into a recorder of its own (read by `_dump_nccl_trace_json`, CUDA builds only);
    the generic one then holds only the job's gloo side groups. No GPU here: both are stand-ins."""
    import json

    import torch._C._distributed_c10d as c10d

    def recorder(*ops: str) -> Any:
        return lambda collectives, only_active: json.dumps(
            {"entries": [{"pg_id": 0, "collective_seq_id": seq, "profiling_name": op, "retired": True}
                         for seq, op in enumerate(ops, 1)]}).encode()

    monkeypatch.setattr(c10d, "_dump_fr_trace_json", recorder("gloo:all_reduce"))
    monkeypatch.delattr(c10d, "_dump_nccl_trace_json", raising=False)  # a CPU build
    assert [e["profiling_name"] for e in flight_recorder._dump()["entries"]] == ["gloo:all_reduce"]
    monkeypatch.setattr(c10d, "_dump_nccl_trace_json", recorder("nccl:all_reduce", "nccl:broadcast"), raising=False)
    assert [e["profiling_name"] for e in flight_recorder._dump()["entries"]] == ["nccl:all_reduce", "nccl:broadcast"]
    monkeypatch.setattr(c10d, "_dump_nccl_trace_json", recorder(), raising=False)  # a CUDA build, a gloo job
    assert [e["profiling_name"] for e in flight_recorder._dump()["entries"]] == ["gloo:all_reduce"]
