"""The fleet controller: a detached, named Ray actor on the head node that reconciles forever.

Each loop: observe (Ray's node table, the provider's instances) -> plan (pure) -> persist the new
state (write-ahead: a crash after this line never forgets a launch it decided) -> act -> publish
the status document. Its state lives in the GCS KV store (`cluster.store`), so when Ray restarts
the actor (max_restarts=-1) the new instance resumes where the old one stopped: records of
launched instances are there, and instances it never recorded are adopted by name, not relaunched.
"""
from __future__ import annotations

import logging
import os
import statistics
import threading
import time
from collections import deque
from typing import Any

from cluster import gcs
from cluster.act import act
from cluster.observe import observe
from cluster.plan import plan
from cluster.providers import Provider, make_provider
from cluster.spec import FleetSpec
from cluster.status import fleet_status
from cluster.store import FleetStore

log = logging.getLogger("rayfleet.controller")

CONTROLLER_NAME = "rayfleet-controller"
NAMESPACE = "rayfleet"


class FleetController:
    """The actor's body. Ray calls its methods on the actor's main thread; the loop has its own."""

    def __init__(self, gcs_address: str) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.client = gcs.client(gcs_address)
        self.store = FleetStore(self.client)
        self.state = self.store.state()
        self.started_at = time.time()
        self.loops = 0
        self.loop_ms: deque[float] = deque(maxlen=200)
        self.launch_errors: dict[str, str] = {}
        self._provider: Provider | None = None
        self._provider_spec: FleetSpec | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rayfleet-reconcile", daemon=True)
        self._thread.start()
        log.info("controller started (pid %s); resumed %d node records", os.getpid(), len(self.state.nodes))

    # --- the loop -----------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            period = 1.0
            try:
                period = self.reconcile_once()
            except Exception:  # one bad loop must not end the controller; the next one retries
                log.exception("reconcile loop failed")
            self._stop.wait(max(0.0, period - (time.monotonic() - started)))

    def reconcile_once(self) -> float:
        """One observe -> plan -> persist -> act -> publish pass; returns the loop period."""
        started = time.monotonic()
        spec = self.store.spec()
        if spec is None:
            return 1.0
        provider = self._provider_for(spec)
        targets = self.store.targets()
        view = observe(self.client, provider, spec.name, self.launch_errors)
        now = time.time()
        result = plan(spec, self.state, view, now, targets)
        self.store.put_state(result.state)
        self.store.append_events(result.events)
        for event in result.events:
            log.info("%s: %s%s", event.kind, event.message, f" (reason: {event.reason})" if event.reason else "")
        self.launch_errors = act(result.actions, provider, spec, self.client)
        self.state = result.state
        self.loops += 1
        self.loop_ms.append((time.monotonic() - started) * 1000)
        self.store.put_status(fleet_status(spec, result.state, targets, now, self.info(), result.autoscale))
        return spec.scaling.loop_period_s

    def _provider_for(self, spec: FleetSpec) -> Provider:
        if self._provider is None or spec != self._provider_spec:
            self._provider = make_provider(spec, self.store.runtime())
            self._provider_spec = spec
        return self._provider

    # --- called through Ray -------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        samples = list(self.loop_ms)
        return {"pid": os.getpid(), "started_at": self.started_at, "loops": self.loops,
                "loop_ms_p50": statistics.median(samples) if samples else 0.0,
                "loop_ms_max": max(samples) if samples else 0.0}

    def stop(self) -> None:
        """Stop reconciling (before `down` terminates the fleet, so nothing is relaunched)."""
        self._stop.set()
        self._thread.join(timeout=30)


def start_controller(gcs_address: str) -> Any:
    """Create the controller actor, or return the running one (safe to repeat)."""
    import ray

    remote = ray.remote(FleetController)
    actor = remote.options(
        name=CONTROLLER_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
        num_cpus=0, resources={"node:__internal_head__": 0.001},  # on the head, taking no pool CPU
        max_restarts=-1, max_task_retries=-1, max_concurrency=4,
    ).remote(gcs_address)
    ray.get(actor.info.remote(), timeout=120)
    return actor


def stop_controller() -> bool:
    """Stop and kill the controller actor if it runs; True if there was one."""
    import ray

    try:
        actor = ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
    except ValueError:
        return False
    try:
        ray.get(actor.stop.remote(), timeout=60)
    except Exception as error:  # it may already be dying; kill it all the same
        log.info("controller did not stop cleanly: %s", error)
    ray.kill(actor, no_restart=True)
    return True
