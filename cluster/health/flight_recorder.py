"""Each rank's collectives, from PyTorch's flight recorder, read on demand when a job hangs.

PyTorch records every collective of a process group in a ring buffer (the flight recorder: NCCL's
on CUDA, gloo's as well since 2.7) when `TORCH_FR_BUFFER_SIZE` is set before the group is made;
the job's environment sets it (jobs/client/submit.py). It is the evidence that shows which rank
never entered the collective the others wait in. PyTorch dumps it itself only when a collective
times out, long after the hang bound, so each rank runs a `Responder`: a thread that writes the
buffer as JSON (`_dump_fr_trace_json`, never a pickle) when the node's health agent asks, through
two files beside the step counters (stepmarks.py). A rank that is stopped, or whose interpreter
is stuck, does not answer: that too is evidence (attribution.py weighs it).
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from rayfleet.cluster.health import stepmarks
from rayfleet.cluster.health.stepmarks import folder

BUFFER_ENV = "TORCH_FR_BUFFER_SIZE"
BUFFER_SIZE = 2000
"""Entries kept per process group (torchtitan's setting): a few steps of DDP buckets or FSDP layers."""
PREFIX = "rayfleet-collectives-"
POLL_S = 0.05


def request_path(pid: int) -> Path:
    return folder() / f"{PREFIX}{pid}.request"


def answer_path(pid: int) -> Path:
    return folder() / f"{PREFIX}{pid}.json"


def _dump() -> dict[str, Any]:
    """This process's recorded collectives: NCCL's recorder when it holds any (a job on CUDA, whose
    default group is NCCL), else the generic one (gloo's). They are two recorders: PyTorch's
    `_dump_fr_trace_json` reads FlightRecorder<c10::Event>, which gloo writes, and NCCL writes its
    own FlightRecorder<CUDAEvent>, read by `_dump_nccl_trace_json`, which only CUDA builds have
    (torch/csrc/distributed/c10d/FlightRecorder*.cpp). On CUDA the generic one holds only the
    job's gloo side groups (notices, checkpoints), never its gradients' collectives."""
    import torch._C._distributed_c10d as c10d

    nccl = getattr(c10d, "_dump_nccl_trace_json", None)
    if nccl is not None:
        document = json.loads(nccl(True, False))  # (include collectives, not only the active ones)
        if document.get("entries"):
            return dict(document)
    return dict(json.loads(c10d._dump_fr_trace_json(True, False)))


class Responder:
    """In a training rank: answers the agent's requests for this process's flight recorder."""

    def __init__(self, dump: Any = _dump) -> None:
        self.pid = os.getpid()
        self._dump = dump
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="rayfleet-flight-recorder", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        request = request_path(self.pid)
        while not self._stop.wait(POLL_S):
            if not request.exists():
                continue
            try:
                document = {"answered_at": time.time(), "entries": summary(self._dump())}
            except Exception as error:  # no process group yet, or a torch without the recorder
                document = {"answered_at": time.time(), "error": f"{type(error).__name__}: {error}"}
            partial = answer_path(self.pid).with_suffix(".partial")
            partial.write_text(json.dumps(document))
            os.replace(partial, answer_path(self.pid))
            request.unlink(missing_ok=True)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)
        for path in (request_path(self.pid), answer_path(self.pid)):
            path.unlink(missing_ok=True)


def summary(dump: dict[str, Any], newest: int = 8) -> list[dict[str, Any]]:
    """The newest collectives of each process group: sequence number, operation, and whether the
    work was retired (completed and released)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for e in dump.get("entries", []):
        if not e.get("is_p2p"):
            groups.setdefault(str(e.get("pg_id")), []).append(e)
    out = []
    for pg, entries in sorted(groups.items()):  # the newest of each group (the job's own, the notices')
        entries.sort(key=lambda e: int(e.get("collective_seq_id", 0)))
        out += [{"pg": pg, "seq": int(e.get("collective_seq_id", 0)), "op": e.get("profiling_name", ""),
                 "state": e.get("state", ""), "retired": bool(e.get("retired"))} for e in entries[-newest:]]
    return out


def read(pid: int, timeout_s: float = 2.0) -> dict[str, Any]:
    """Ask rank `pid` for its collectives; {"answered": False} when it does not answer in time (a
    stopped process, or one whose interpreter never lets the responder run)."""
    answer = answer_path(pid)
    answer.unlink(missing_ok=True)
    request_path(pid).touch()
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if answer.exists():
                try:
                    document = json.loads(answer.read_text())
                except (OSError, ValueError):
                    document = None
                if document is not None:
                    answer.unlink(missing_ok=True)
                    return {"answered": True, **document}
            time.sleep(POLL_S / 2)
        return {"answered": False}
    finally:
        request_path(pid).unlink(missing_ok=True)


def sweep(alive: Any = None) -> int:
    """Remove the request and answer files of processes that no longer exist; returns how many."""
    return stepmarks.sweep(alive, prefix=PREFIX)
