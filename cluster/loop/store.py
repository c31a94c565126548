"""The fleet's durable record in Ray's GCS KV store (namespace `rayfleet`).

| key      | written by            | holds                                                   |
|----------|-----------------------|---------------------------------------------------------|
| spec     | `rayfleet up`         | the validated fleet spec (JSON)                         |
| runtime  | `rayfleet up`         | where the fleet lives: fleet dir, GCS address, token    |
| targets  | `rayfleet scale`      | manual node targets per pool (user intent)              |
| quarantine | `rayfleet quarantine` | release / terminate requests for quarantined nodes    |
| notices  | the controller        | node id -> when it goes away (jobs checkpoint for it)   |
| state/...| the controller        | its FleetState: a key per node record, one for the rest;|
|          |                       | a pass writes what changed (cluster/loop/records.py)    |
| status   | the controller        | the status document `rayfleet status` prints            |
| health   | the controller        | per node, per check: what `rayfleet health` prints      |
| events   | the controller        | the newest decisions with their reasons                 |

Each key has one writer, so no read-modify-write races between the CLI and the controller.
With head fault tolerance on, the GCS keeps these in Redis and they outlive a head restart.
"""
from __future__ import annotations

import json
from typing import Any, Iterable

from rayfleet.cluster.loop.records import StateRecords
from rayfleet.cluster.rayio import gcs
from rayfleet.names import EVENTS_KEY, HEALTH_KEY, QUARANTINE_KEY, RUNTIME_KEY, SPEC_KEY, STATUS_KEY, TARGETS_KEY, USAGE_KEY
from rayfleet.cluster.decide.events import Event, bounded
from rayfleet.cluster.spec.fleet import FleetSpec, fleet_spec_from_json
from rayfleet.cluster.decide.state import FleetState

EVENTS_KEPT = 2000


class FleetStore:
    def __init__(self, client: Any) -> None:
        self.client = client
        self._state = StateRecords(client)  # remembers what it last wrote: one store per writer

    # --- written by the CLI -----------------------------------------------------------------
    def put_spec(self, spec: FleetSpec) -> None:
        gcs.kv_put(self.client, SPEC_KEY, spec.model_dump_json())

    def spec(self) -> FleetSpec | None:
        raw = gcs.kv_get(self.client, SPEC_KEY)
        return fleet_spec_from_json(raw.decode()) if raw else None

    def put_runtime(self, runtime: dict[str, Any]) -> None:
        gcs.kv_put(self.client, RUNTIME_KEY, json.dumps(runtime, sort_keys=True))

    def runtime(self) -> dict[str, Any]:
        return self._json(RUNTIME_KEY, {})

    def put_quarantine_requests(self, requests: dict[str, Any]) -> None:
        gcs.kv_put(self.client, QUARANTINE_KEY, json.dumps(requests, sort_keys=True))

    def quarantine_requests(self) -> dict[str, Any]:
        """{"release": {instance: asked at}, "terminate": [instance, ...]}, written by the CLI."""
        return self._json(QUARANTINE_KEY, {"release": {}, "terminate": []})

    def put_targets(self, targets: dict[str, int]) -> None:
        gcs.kv_put(self.client, TARGETS_KEY, json.dumps(targets, sort_keys=True))

    def targets(self) -> dict[str, int]:
        return {pool: int(count) for pool, count in self._json(TARGETS_KEY, {}).items()}

    # --- written by the controller ------------------------------------------------------------
    def put_state(self, state: FleetState) -> None:
        """Write the node records and fleet record that changed since the last put_state or state()."""
        self._state.write(state)

    def state(self) -> FleetState:
        return self._state.read()

    def put_usage(self, totals: dict[str, dict[str, float]], at: float) -> None:
        """GPU-seconds by pool and state (cluster/decide/usage.py), and when they were last added to."""
        gcs.kv_put(self.client, USAGE_KEY, json.dumps({"totals": totals, "at": at}, sort_keys=True))

    def usage(self) -> tuple[dict[str, dict[str, float]], float | None]:
        doc = self._json(USAGE_KEY, {})
        return doc.get("totals", {}), doc.get("at")

    def put_status(self, status: dict[str, Any]) -> None:
        gcs.kv_put(self.client, STATUS_KEY, json.dumps(status, sort_keys=True))

    def status(self) -> dict[str, Any] | None:
        return self._json(STATUS_KEY, None)

    def put_health(self, health: dict[str, Any]) -> None:
        gcs.kv_put(self.client, HEALTH_KEY, json.dumps(health, sort_keys=True))

    def health(self) -> dict[str, Any] | None:
        return self._json(HEALTH_KEY, None)

    def append_events(self, new: Iterable[Event]) -> None:
        new = list(new)
        if not new:
            return
        kept = bounded([*self.events(), *new], EVENTS_KEPT)
        gcs.kv_put(self.client, EVENTS_KEY, json.dumps([event.to_json() for event in kept]))

    def events(self) -> list[Event]:
        return [Event.from_json(item) for item in self._json(EVENTS_KEY, [])]

    def _json(self, key: str, default: Any) -> Any:
        raw = gcs.kv_get(self.client, key)
        return json.loads(raw) if raw else default
