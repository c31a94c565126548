"""A training worker process's side of warm standby (jobs/driver/warm.py keeps the standbys).

A process that the raylet prestarted for the job idles after its imports (jobs/worker/preload.py)
until an actor takes it; meanwhile it keeps a heartbeat key in the GCS KV
(`job/NAME/warm/NODE/PID`), which the driver's keeper counts, and deletes it once an actor took it.
Rank 0 of each attempt publishes the workers' exact runtime environment, which the keeper
prestarts standbys with.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time

from rayfleet.names import NAMESPACE, standby_key, warm_env_key as env_key

log = logging.getLogger("rayfleet.job")
IDLE_S = 1.0  # a process idle this long after its imports is a standby, not a cold start
BEAT_S = 2.0  # an idle standby refreshes its key this often


_standby = False  # this process idled as a standby before an actor took it


def was_standby() -> bool:
    """Whether this worker process waited as a warm standby (rather than starting cold)."""
    return _standby


def announce(job: str, submission_id: str | None) -> None:
    """Keep this process's standby heartbeat, from a daemon thread, while it idles."""
    threading.Thread(target=_heartbeat, args=(job, submission_id), name="rayfleet-standby", daemon=True).start()


def _heartbeat(job: str, submission_id: str | None) -> None:
    """A process started for an actor that was already waiting (a cold start) gets it within
    milliseconds of its hook's end: only one still idle IDLE_S later is a standby and says so."""
    global _standby
    import ray
    from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_put

    context = ray.get_runtime_context()
    ready = time.monotonic()
    while time.monotonic() - ready < IDLE_S:
        if context.get_actor_id() is not None:
            return  # a cold start
        time.sleep(0.05)
    _standby = True
    key = standby_key(job, context.get_node_id(), os.getpid())
    last = 0.0
    try:
        while context.get_actor_id() is None:  # still idle: no actor took this process yet
            if time.monotonic() - last >= BEAT_S:
                _internal_kv_put(key, json.dumps({"time": time.time(), "submission_id": submission_id}),
                                 overwrite=True, namespace=NAMESPACE)
                last = time.monotonic()
            time.sleep(0.2)
        _internal_kv_del(key, namespace=NAMESPACE)
    except Exception as error:  # the GCS went away, or the process is ending: the key goes stale
        log.debug("standby heartbeat ended: %s", error)


def publish_env(job: str, submission_id: str) -> None:
    """Rank 0: the exact runtime environment of this job's training workers, for the keeper."""
    import ray
    from ray.experimental.internal_kv import _internal_kv_put

    env = ray.get_runtime_context().get_runtime_env_string()
    _internal_kv_put(env_key(job), json.dumps({"submission_id": submission_id, "env": env, "time": time.time()}),
                     overwrite=True, namespace=NAMESPACE)
