"""Preemption and maintenance notices, as a job's workers see them.

The controller publishes `notices` in the GCS KV: Ray node id -> the time the node goes away (a
spot interruption, a Kubernetes eviction, `rayfleet chaos preempt`). Each rank checks whether its
own node has one (at most once a second); the ranks agree through an all-reduce (MAX of their
deadlines; NoticeAgreement, non-blocking, one step late), checkpoint at the same step, and hold
there: the controller ends the noticed node as soon as the job has acknowledged, and Ray Train restarts the workers on the replacement from that
checkpoint. No step is done twice.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any

from rayfleet.names import NAMESPACE, NOTICES_KEY, notice_ack_key as ack_key

log = logging.getLogger("rayfleet.job")


class NodeEnded(RuntimeError):
    """A node of the job was ended for its notice while the other ranks held: they stop too, so
    that Ray Train restarts the job now rather than at the notice's deadline."""


def read_notices() -> dict[str, float]:
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(NOTICES_KEY, namespace=NAMESPACE)
    return {node: float(deadline) for node, deadline in (json.loads(raw) if raw else {}).items()}


def node_alive(node_id: str) -> bool:
    import ray

    return any(n["NodeID"] == node_id and n["Alive"] for n in ray.nodes())


class NoticeReader:
    def __init__(self, node_id: str, every_s: float = 1.0) -> None:
        self.node_id = node_id
        self.every_s = every_s
        self._last = 0.0
        self._deadline = 0.0
        self._handled = 0.0

    def ignore_until(self, deadline: float) -> None:
        """A notice already handled (checkpointed and held for) is not acted on twice."""
        self._handled = max(self._handled, deadline)

    def deadline(self) -> float:
        """This rank's node's notice deadline (unix time), or 0 when it has none (or it was handled)."""
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            try:
                self._deadline = read_notices().get(self.node_id, 0.0)
            except Exception as error:
                log.debug("notices not read: %s", error)
        return self._deadline if self._deadline > self._handled else 0.0


class NoticeAgreement:
    """The job's notice deadline, agreed by every rank without stalling a step.

    Each call starts a MAX all-reduce of this rank's deadline on a CPU gloo group of its own and
    returns the result of the one started by the call before: the collective runs beside the step
    on gloo's thread, and no GPU tensor is read (no host sync). Every rank calls once per step, so
    all ranks see the same agreed value at the same step, one step after the notice was read.
    Deadlines already handled are not returned again.
    """

    def __init__(self, reader: NoticeReader, world: int) -> None:
        import torch.distributed as dist

        self.reader, self.world = reader, world
        self.group = dist.new_group(backend="gloo") if world > 1 else None
        self._work: Any = None
        self._value: Any = None
        self._handled = 0.0

    def poll(self) -> float:
        """The deadline agreed so far (0: none pending)."""
        own = self.reader.deadline()
        if self.world == 1:
            agreed = own
        else:
            import torch
            import torch.distributed as dist

            agreed = self.wait()
            self._value = torch.tensor([own], dtype=torch.float64)
            self._work = dist.all_reduce(self._value, op=dist.ReduceOp.MAX, group=self.group, async_op=True)
        return agreed if agreed > self._handled else 0.0

    def handled(self, deadline: float) -> None:
        self._handled = max(self._handled, deadline)
        self.reader.ignore_until(deadline)

    def wait(self) -> float:
        """Finish the all-reduce in flight; its result (0 when none)."""
        if self._work is None:
            return 0.0
        self._work.wait()
        self._work = None
        return float(self._value[0])


def hold(deadline: float, every_s: float = 0.2) -> None:
    """Hold at a checkpointed step for the notice(s) due at `deadline`, until one of:
    - the deadline passes, or the notice is withdrawn (its node is alive and no longer noticed):
      return, and training goes on;
    - the controller ended a noticed node (it left the notices and is dead in Ray): raise
      NodeEnded. Ray Train, which has seen the node drain, would otherwise keep the surviving
      ranks until the deadline before it restarts the job (its PreemptingState waits for every
      rank to exit); they exit now, and the restart takes the replacement at once."""
    held = {node for node, due in read_notices().items() if abs(due - deadline) <= 1.0}
    while time.time() < deadline:
        try:
            gone = held - set(read_notices())
        except Exception as error:  # a GCS hiccup: hold on, look again
            log.debug("notices not read: %s", error)
            gone = set()
        for node in gone:
            if not node_alive(node):
                raise NodeEnded(f"node {node[:12]} was ended for its notice; restarting from the checkpoint")
        held -= gone
        if not held:
            return
        time.sleep(every_s)


def acknowledge(job: str, submission_id: str, step: int, deadline: float) -> None:
    """Tell the controller the job checkpointed at `step` for a notice and holds until `deadline`."""
    from ray.experimental.internal_kv import _internal_kv_put

    _internal_kv_put(ack_key(job), json.dumps({"submission_id": submission_id, "step": step, "deadline": deadline,
                                              "time": time.time()}), overwrite=True, namespace=NAMESPACE)
