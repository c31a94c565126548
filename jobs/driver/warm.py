"""Warm standby workers: a restart after a failure starts its training workers in processes that
already run and have imported torch, Ray Train and the model, instead of cold ones.

Measured on the 2-core CI machine (Ray 2.60, `/tmp`-style probe of one node kill): Ray Train's
whole-group restart took 9.1 s, of which 7.4 s went to starting two worker processes and importing
in them (actor creation 2.9 s, train context 2.6 s, train function 1.9 s). Ray's raylet can start
a worker process for a job ahead of need (`NodeManagerService.PrestartWorkers`, with a keep-alive
that exempts it from idle-worker reaping), and an actor that asks for a worker of the same job and
runtime environment takes such an idle one instead of starting another (measured: 0.29 s to a
ready actor against 3.2 s cold).

The pieces:
- every training worker of the job runs `preload` first (jobs/worker/preload.py; Ray's worker
  process setup hook, set in the workers' runtime environment by `worker_runtime_env`): it imports
  what a worker needs, then, while the process is idle, keeps a heartbeat key in the GCS KV
  (`job/NAME/warm/NODE/PID`, jobs/worker/standby.py). A process that becomes an actor deletes its key;
- rank 0 publishes the workers' exact runtime environment (`standby.publish_env`): a prestarted
  process serves an actor only when the two match byte for byte;
- the driver runs a `Keeper` thread: every `interval_s` it counts the live heartbeats on each alive
  node of the job's pool and asks the raylet of a node short of standbys to prestart the rest
  (`plan`, pure). A node fits as many standbys as the job's workers it could hold. Standbys are
  replaced only once the attempt that used them trains (rank 0 beat after it started): their
  imports would otherwise take CPU from the restart they are meant to speed up.

The first attempt starts cold (the environment is known once a worker runs); every restart after
a node loss, a hang or a notice finds its processes waiting. Each standby costs one idle Python
process with torch imported (about 300 MB of host memory), only while the job runs: Ray ends a
job's workers with the job. `failure.warm_standby: false` turns it off.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from rayfleet.cluster.rayio import gcs
from rayfleet.names import POOL_LABEL, beat_key, warm_env_key as env_key, warm_prefix
from rayfleet.jobs.contract import WORKER_SETUP_HOOK_ENV
from rayfleet.jobs.worker.preload import HOOK

log = logging.getLogger("rayfleet.job")
STALE_S = 8.0     # a standby whose key is older than this is gone (it refreshes it every standby.BEAT_S)
# A prestart asked for counts as coming for this long. Its imports take seconds on an idle node but
# over 40 s with three standbys importing torch at once beside training on 2 cores: asking again
# before they are through would start duplicates, whose imports slow every other one further.
PENDING_S = 120.0
KEEP_ALIVE_S = 3600  # Ray does not reap an idle prestarted worker before this


def worker_runtime_env() -> dict[str, Any]:
    """The training workers' runtime environment addition: run `preload` when a process starts."""
    return {"env_vars": {WORKER_SETUP_HOOK_ENV: HOOK}}


@dataclass(frozen=True)
class PoolNode:
    node_id: str
    address: str      # the raylet's NodeManagerService, host:port
    slots: int        # how many of the job's workers fit on it


def plan(nodes: list[PoolNode], standing: Mapping[str, int], coming: Mapping[str, int]) -> dict[str, int]:
    """Node id -> standbys to prestart now: each node's slots, less its live standbys and those
    asked for that have not come up yet."""
    out = {}
    for node in nodes:
        missing = node.slots - standing.get(node.node_id, 0) - coming.get(node.node_id, 0)
        if missing > 0:
            out[node.node_id] = missing
    return out


class Asks:
    """Prestarts asked for per node, and which of them came up: a standby counts as arrived from
    its first heartbeat on, even once an actor took it. An ask not answered within PENDING_S
    counts no more (the raylet refused it, or its processes died). Standbys are told apart by
    their keys, not by clocks: the driver's and the nodes' need not agree."""

    def __init__(self) -> None:
        self.asked: dict[str, tuple[float, int, frozenset[str]]] = {}  # node -> (when, how many, standbys then)
        self.seen: dict[str, set[str]] = {}                            # node -> standbys come up since

    def ask(self, node_id: str, count: int, now: float, present: Iterable[str]) -> None:
        self.asked[node_id] = (now, count, frozenset(present))
        self.seen[node_id] = set()

    def coming(self, standbys: Mapping[str, Iterable[str]], now: float) -> dict[str, int]:
        """`standbys`: node id -> keys of its live standbys."""
        out = {}
        for node_id, (at, count, before) in list(self.asked.items()):
            if now - at >= PENDING_S:
                del self.asked[node_id], self.seen[node_id]
                continue
            self.seen[node_id] |= set(standbys.get(node_id, ())) - before
            out[node_id] = max(0, count - len(self.seen[node_id]))
        return out


def training(published: Mapping[str, Any], beat: Mapping[str, Any] | None) -> bool:
    """Whether the attempt that published the environment has made a step since (rank 0's beat)."""
    return (beat is not None and beat.get("submission_id") == published.get("submission_id")
            and float(beat.get("time", 0)) > float(published.get("time", 0)))


def standing(entries: Mapping[str, bytes], submission_id: str, now: float) -> dict[str, set[str]]:
    """Node id -> keys of the live standbys of this submission, from the KV entries under
    `job/NAME/warm/` (an entry not refreshed within STALE_S is a standby gone)."""
    out: dict[str, set[str]] = {}
    for key, raw in entries.items():
        try:
            value = json.loads(raw)
        except ValueError:
            continue
        if value.get("submission_id") == submission_id and now - float(value.get("time", 0)) < STALE_S:
            out.setdefault(key.split("/")[-2], set()).add(key)
    return out


def live_standbys(client: Any, job: str, submission_id: str, now: float) -> dict[str, set[str]]:
    """Node id -> keys of the submission's standbys waiting now, read from the GCS KV."""
    entries = gcs.kv_multi_get(client, gcs.kv_keys(client, warm_prefix(job)))
    return standing(entries, submission_id, now)


class Keeper:
    """The driver's thread that keeps standbys on the pool's nodes while the job runs."""

    def __init__(self, job: str, submission_id: str, pool: str, per_node: int, interval_s: float = 1.0) -> None:
        """`per_node`: standbys wanted on each node of `pool` (the job's workers one node holds)."""
        self.job, self.submission_id, self.pool = job, submission_id, pool
        self.per_node, self.interval_s = per_node, interval_s
        self.asks = Asks()
        self.attempt: float | None = None  # when the attempt the asks are for published its environment
        self._gcs: Any = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rayfleet-keeper", daemon=True)

    def start(self) -> Keeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.tick(time.time())
            except Exception as error:  # a GCS hiccup: try again next time
                log.warning("standby keeper: %s", error, exc_info=True)

    def tick(self, now: float) -> dict[str, int]:
        import ray

        if self._gcs is None:
            self._gcs = gcs.client(ray.get_runtime_context().gcs_address)
        raw = gcs.kv_get(self._gcs, env_key(self.job))
        published = json.loads(raw) if raw else {}
        if published.get("submission_id") != self.submission_id:
            return {}  # no worker of this submission ran yet: its environment is unknown
        if published.get("time") != self.attempt:
            # A new attempt started (rank 0 publishes at each): the standbys asked for before it
            # served it or will show up as standing. An ask stays open only until then, since a
            # standby taken by the restart before any tick saw it would otherwise count as coming.
            self.attempt, self.asks = published.get("time"), Asks()
        beat = gcs.kv_get(self._gcs, beat_key(self.job, 0))
        if not training(published, json.loads(beat) if beat else None):
            return {}  # the attempt is starting: its start-up comes first, standbys after its first step
        nodes = [PoolNode(n["NodeID"], f"{n['NodeManagerAddress']}:{n['NodeManagerPort']}", self.per_node)
                 for n in ray.nodes() if n.get("Alive") and (n.get("Labels") or {}).get(POOL_LABEL) == self.pool]
        standbys = live_standbys(self._gcs, self.job, self.submission_id, now)
        coming = self.asks.coming(standbys, now)
        todo = plan(nodes, {node_id: len(up) for node_id, up in standbys.items()}, coming)
        by_id = {node.node_id: node for node in nodes}
        job_id = ray.get_runtime_context().get_job_id()
        for node_id, count in todo.items():
            prestart(by_id[node_id].address, job_id, published["env"], count)
            self.asks.ask(node_id, count, now, standbys.get(node_id, ()))
            log.info("asked node %s for %d standby worker(s)", node_id[:12], count)
        return todo


def prestart(address: str, job_id: str, runtime_env: str, count: int, timeout_s: float = 5.0) -> None:
    """Ask one raylet to start `count` idle workers of this job and runtime environment."""
    import grpc
    from ray.core.generated import common_pb2, node_manager_pb2, node_manager_pb2_grpc, runtime_environment_pb2

    request = node_manager_pb2.PrestartWorkersRequest(
        language=common_pb2.PYTHON, job_id=bytes.fromhex(job_id), num_workers=count,
        runtime_env_info=runtime_environment_pb2.RuntimeEnvInfo(serialized_runtime_env=runtime_env),
        keep_alive_duration_secs=KEEP_ALIVE_S)
    channel = grpc.insecure_channel(address)
    try:
        node_manager_pb2_grpc.NodeManagerServiceStub(channel).PrestartWorkers(
            request, timeout=timeout_s, metadata=gcs.auth_metadata(os.environ))
    finally:
        channel.close()
