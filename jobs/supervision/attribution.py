"""Which rank hangs a job, decided from evidence, pure.

Detection (hang.py) says that no rank advanced for too long; it cannot say which rank is the
cause: every rank of a synchronous job stops at once, the healthy ones waiting in the collective
that the stuck one never enters. Each rank's evidence is read when the hang is found (by the
health agent of its node) and weighed in this order:

1. its process's state (psutil): stopped, traced, zombie or in uninterruptible sleep, while the
   others are not;
2. its step counters (cluster/health/stepmarks.py, exact at that moment): a rank behind the
   others, in (last step started, last step finished), never reached the point they wait at;
3. its stack (py-spy): the others wait inside a collective and it is somewhere else;
4. its collectives (PyTorch's flight recorder, NCCL's on CUDA and gloo's on CPU, read through
   cluster/health/flight_recorder.py): the others wait in collective #N and it never entered #N,
   or it does not answer at all while they do.

Each kind of evidence names culprits or cannot decide. The culprits are those the deciding kinds
agree on; when two kinds name different ranks, or none decides, there is no culprit and every
rank is a candidate the record names.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

ABNORMAL_STATES = frozenset({"stopped", "tracing-stop", "zombie", "disk-sleep", "dead"})
"""Process states (psutil's names) a rank does not reach by waiting on its peers."""

# Frames of a rank waiting for its peers: torch.distributed's collectives, DDP's and FSDP's
# communication, autograd's backward (where DDP's gradient all-reduce is waited for), the wait
# for the notice all-reduce started the step before (jobs/worker/notices.py), and Ray Train's own
# barriers between workers.
COLLECTIVE_FRAMES = (
    re.compile(r"\(.*torch/distributed/distributed_c10d\.py:\d+\)"),
    re.compile(r"\(.*torch/distributed/fsdp/.*\)"),
    # (py-spy names a method with its class, `DistributedDataParallel._sync_buffers`, or without)
    re.compile(r"^\s*(?:[\w.]+\.)?(_sync_buffers|_sync_module_states|_distributed_broadcast_coalesced|"
               r"_sync_params_and_buffers) \(.*torch/nn/parallel/distributed\.py:\d+\)"),
    re.compile(r"^\s*(?:[\w.]+\.)?_engine_run_backward \(.*torch/autograd/graph\.py:\d+\)"),
    re.compile(r"^\s*(?:[\w.]+\.)?wait \(.*jobs/worker/notices\.py:\d+\)"),
    re.compile(r"^\s*(?:[\w.]+\.)?\w*(barrier|broadcast_from_rank_zero|_across_ranks)\w* \(.*ray/train/.*\)"),
)
FRAME = re.compile(r"^\s+(\S+) \((.+):(\d+)\)")


@dataclass(frozen=True)
class RankEvidence:
    rank: int
    pid: int
    node_id: str
    state: str | None = None         # psutil status; None: not read (no agent answered)
    started: int | None = None       # the step it last started; None: no counters
    finished: int | None = None      # the step it last finished
    stack: str | None = None         # py-spy's dump; None: not read
    collectives: Mapping[str, Any] | None = None  # flight_recorder.read(); None: not read

    @property
    def in_collective(self) -> bool | None:
        """Whether its training thread waits in a collective; None when its stack is unknown."""
        frames = training_thread(self.stack)
        if frames is None:
            return None
        return any(pattern.search(line) for line in frames for pattern in COLLECTIVE_FRAMES)

    @property
    def top_frame(self) -> str | None:
        frames = training_thread(self.stack)
        match = FRAME.match(frames[0]) if frames else None
        return f"{match.group(1)} ({match.group(2).rsplit('/', 1)[-1]}:{match.group(3)})" if match else None


def threads(stack: str) -> list[tuple[str, list[str]]]:
    """A py-spy dump's threads: (the header line, its frame lines, innermost first)."""
    out: list[tuple[str, list[str]]] = []
    for line in stack.splitlines():
        if line.startswith("Thread "):
            out.append((line, []))
        elif out and FRAME.match(line):
            out[-1][1].append(line)
    return out


def training_thread(stack: str | None) -> list[str] | None:
    """The frames of the thread that trains: the one in rayfleet's training loop (Ray Train runs it
    in its own "TrainingThread"; the process's main thread serves Ray's worker loop), else a
    thread Ray Train named so, else the main thread. None when the stack is unknown."""
    if not stack:
        return None
    found = threads(stack)
    for test in (lambda header, frames: any("jobs/worker/loop.py" in f for f in frames),
                 lambda header, frames: '"TrainingThread' in header,
                 lambda header, frames: '"MainThread"' in header):
        for header, frames in found:
            if frames and test(header, frames):
                return frames
    return None


@dataclass(frozen=True)
class Finding:
    kind: str                          # "process", "steps", "stack" or "collectives"
    culprits: tuple[int, ...] | None   # None: this evidence cannot decide
    saw: dict[int, str]                # rank -> what was seen of it

    def to_json(self) -> dict:
        return {"kind": self.kind, "culprits": list(self.culprits) if self.culprits is not None else None,
                "saw": {str(rank): seen for rank, seen in sorted(self.saw.items())}}


@dataclass(frozen=True)
class Attribution:
    culprits: tuple[int, ...]          # empty when the evidence does not decide
    candidates: tuple[int, ...]        # the ranks that may be the cause (the culprits, when decided)
    decided_by: str | None             # the first kind of evidence that named the culprits
    findings: tuple[Finding, ...] = field(default=())

    @property
    def decided(self) -> bool:
        return bool(self.culprits)

    def summary(self) -> str:
        if self.decided:
            agreed = [f.kind for f in self.findings if f.culprits == self.culprits]
            who = ", ".join(f"rank {r}" for r in self.culprits)
            return f"{who} {'is' if len(self.culprits) == 1 else 'are'} the cause ({' and '.join(agreed)})"
        named = [f for f in self.findings if f.culprits is not None]
        why = ("the evidence disagrees: " + "; ".join(f"{f.kind} names {list(f.culprits or ())}" for f in named)
               if named else "no evidence names a rank")
        return f"cause undecided between ranks {', '.join(map(str, self.candidates))} ({why})"

    def to_json(self) -> dict:
        return {"culprits": list(self.culprits), "candidates": list(self.candidates), "decided_by": self.decided_by,
                "findings": [f.to_json() for f in self.findings]}


def _split(ranks: Sequence[int], named: set[int]) -> tuple[int, ...] | None:
    """Named ranks as culprits when they are some, not all (nor none), of the ranks."""
    return tuple(sorted(named)) if named and len(named) < len(ranks) else None


def by_process(evidence: Mapping[int, RankEvidence]) -> Finding:
    saw = {r: e.state or "unknown" for r, e in evidence.items()}
    named = {r for r, e in evidence.items() if e.state in ABNORMAL_STATES}
    return Finding("process", _split(list(evidence), named), saw)


def by_steps(evidence: Mapping[int, RankEvidence]) -> Finding:
    saw = {r: (f"started {e.started}, finished {e.finished}" if e.started is not None else "no counters")
           for r, e in evidence.items()}
    if any(e.started is None or e.finished is None for e in evidence.values()):
        return Finding("steps", None, saw)
    ahead = max((e.started, e.finished) for e in evidence.values())
    named = {r for r, e in evidence.items() if (e.started, e.finished) < ahead}
    return Finding("steps", _split(list(evidence), named), saw)


def by_stack(evidence: Mapping[int, RankEvidence]) -> Finding:
    where = {r: e.in_collective for r, e in evidence.items()}
    saw = {r: ("in a collective" if where[r] else f"outside any collective, at {e.top_frame}")
           if where[r] is not None else "no stack" for r, e in evidence.items()}
    if any(inside is None for inside in where.values()) or not any(where.values()):
        return Finding("stack", None, saw)
    return Finding("stack", _split(list(evidence), {r for r, inside in where.items() if not inside}), saw)


def _newest(collectives: Mapping[str, Any]) -> tuple[int, bool, str] | None:
    """(sequence number, still in flight, operation) of a rank's newest collective of the default group."""
    entries = [e for e in collectives.get("entries") or [] if e.get("pg") == "0"] or list(collectives.get("entries") or [])
    if not entries:
        return None
    newest = max(entries, key=lambda e: e["seq"])
    return newest["seq"], not newest["retired"], str(newest["op"])


def by_collectives(evidence: Mapping[int, RankEvidence]) -> Finding:
    """Ranks waiting inside a collective are not the cause; of the others, one whose newest
    collective is done and older than the newest one awaited never entered it, and one that does
    not answer is not running its interpreter (stopped, or stuck). (Healthy ranks may wait in
    different collectives: gloo's broadcast lets a receiver go on to the next one while its root
    still waits for the stopped rank.) Undecided without a rank waiting, or with any rank unread."""
    newest: dict[int, tuple[int, bool, str] | None] = {}
    saw: dict[int, str] = {}
    for rank, e in evidence.items():
        if e.collectives is None:
            saw[rank] = "not read"
        elif not e.collectives.get("answered"):
            saw[rank] = "did not answer"
        elif e.collectives.get("error"):
            saw[rank] = f"no record: {e.collectives['error']}"
        else:
            newest[rank] = _newest(e.collectives)
            seq = newest[rank]
            saw[rank] = (f"waits in {seq[2]} #{seq[0]}" if seq[1] else f"newest {seq[2]} #{seq[0]}, done")\
                if seq else "no collective yet"
    unread = [r for r, e in evidence.items() if e.collectives is None or e.collectives.get("error")]
    waiting = [seq[0] for seq in newest.values() if seq is not None and seq[1]]
    if unread or not waiting:
        return Finding("collectives", None, saw)
    awaited = max(waiting)
    named = {r for r in evidence if r not in newest or newest[r] is None
             or (not newest[r][1] and newest[r][0] < awaited)}
    return Finding("collectives", _split(list(evidence), named), saw)


def attribute(evidence: Mapping[int, RankEvidence]) -> Attribution:
    """The hang's culprits, from every rank's evidence (see the module's docstring)."""
    findings = (by_process(evidence), by_steps(evidence), by_stack(evidence), by_collectives(evidence))
    named = [f for f in findings if f.culprits is not None]
    ranks = tuple(sorted(evidence))
    if named and all(f.culprits == named[0].culprits for f in named):
        culprits = named[0].culprits or ()
        return Attribution(culprits, culprits, named[0].kind, findings)
    candidates = tuple(sorted({r for f in named for r in f.culprits or ()})) if named else ranks
    return Attribution((), candidates, None, findings)
