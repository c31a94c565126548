"""The fleet's durable record in Ray's GCS KV store (namespace `rayfleet`).

| key      | written by            | holds                                                   |
|----------|-----------------------|---------------------------------------------------------|
| spec     | `rayfleet up`         | the validated fleet spec (JSON)                         |
| runtime  | `rayfleet up`         | where the fleet lives: fleet dir, GCS address, token    |
| targets  | `rayfleet scale`      | manual node targets per pool (user intent)              |
| quarantine | `rayfleet quarantine` | release / terminate requests for quarantined nodes    |
| notices  | the controller        | node id -> when it goes away (jobs checkpoint for it)   |
| state    | the controller        | its FleetState: node records, sequences, backoffs       |
| status   | the controller        | the status document `rayfleet status` prints            |
| health   | the controller        | per node, per check: what `rayfleet health` prints      |
| events   | the controller        | the newest decisions with their reasons                 |

Each key has one writer, so no read-modify-write races between the CLI and the controller.
With head fault tolerance on, the GCS keeps these in Redis and they outlive a head restart.
"""
from __future__ import annotations

import json
from typing import Any, Iterable

from rayfleet.cluster.rayio import gcs
from rayfleet.cluster.decide.events import Event, bounded
from rayfleet.cluster.spec.fleet import FleetSpec, fleet_spec_from_json
from rayfleet.cluster.decide.state import FleetState

EVENTS_KEPT = 2000


class FleetStore:
    def __init__(self, client: Any) -> None:
        self.client = client

    # --- written by the CLI -----------------------------------------------------------------
    def put_spec(self, spec: FleetSpec) -> None:
        gcs.kv_put(self.client, "spec", spec.model_dump_json())

    def spec(self) -> FleetSpec | None:
        raw = gcs.kv_get(self.client, "spec")
        return fleet_spec_from_json(raw.decode()) if raw else None

    def put_runtime(self, runtime: dict[str, Any]) -> None:
        gcs.kv_put(self.client, "runtime", json.dumps(runtime, sort_keys=True))

    def runtime(self) -> dict[str, Any]:
        return self._json("runtime", {})

    def put_quarantine_requests(self, requests: dict[str, Any]) -> None:
        gcs.kv_put(self.client, "quarantine", json.dumps(requests, sort_keys=True))

    def quarantine_requests(self) -> dict[str, Any]:
        """{"release": {instance: asked at}, "terminate": [instance, ...]}, written by the CLI."""
        return self._json("quarantine", {"release": {}, "terminate": []})

    def put_targets(self, targets: dict[str, int]) -> None:
        gcs.kv_put(self.client, "targets", json.dumps(targets, sort_keys=True))

    def targets(self) -> dict[str, int]:
        return {pool: int(count) for pool, count in self._json("targets", {}).items()}

    # --- written by the controller ------------------------------------------------------------
    def put_state(self, state: FleetState) -> None:
        gcs.kv_put(self.client, "state", state.to_json())

    def state(self) -> FleetState:
        return FleetState.from_json(gcs.kv_get(self.client, "state"))

    def put_usage(self, totals: dict[str, dict[str, float]], at: float) -> None:
        """GPU-seconds by pool and state (cluster/decide/usage.py), and when they were last added to."""
        gcs.kv_put(self.client, "usage", json.dumps({"totals": totals, "at": at}, sort_keys=True))

    def usage(self) -> tuple[dict[str, dict[str, float]], float | None]:
        doc = self._json("usage", {})
        return doc.get("totals", {}), doc.get("at")

    def put_status(self, status: dict[str, Any]) -> None:
        gcs.kv_put(self.client, "status", json.dumps(status, sort_keys=True))

    def status(self) -> dict[str, Any] | None:
        return self._json("status", None)

    def put_health(self, health: dict[str, Any]) -> None:
        gcs.kv_put(self.client, "health", json.dumps(health, sort_keys=True))

    def health(self) -> dict[str, Any] | None:
        return self._json("health", None)

    def append_events(self, new: Iterable[Event]) -> None:
        new = list(new)
        if not new:
            return
        kept = bounded([*self.events(), *new], EVENTS_KEPT)
        gcs.kv_put(self.client, "events", json.dumps([event.to_json() for event in kept]))

    def events(self) -> list[Event]:
        return [Event.from_json(item) for item in self._json("events", [])]

    def _json(self, key: str, default: Any) -> Any:
        raw = gcs.kv_get(self.client, key)
        return json.loads(raw) if raw else default
