"""The controller's FleetState in the GCS KV store: one record per node, one fleet-level record.

| key                      | holds                                                          |
|--------------------------|----------------------------------------------------------------|
| state/node/<instance>    | one NodeRecord (JSON)                                          |
| state/fleet              | the rest of FleetState: sequences, pool failures, replacements, demand times |
| state (before this layout) | the whole FleetState as one document: read once, on upgrade  |

A pass writes only what changed since the last successful write, which this object remembers:
node records that differ from (or were never) written, the fleet record if it differs, and a
delete for each node that left the state. A steady pass of a 12,500-node fleet writes nothing or
the fleet record alone; an incident writes the records of the nodes it touched (see
bench/fleet_scale.py). The GCS client has no multi-put (Ray 2.60's GcsClient: internal_kv_put,
_get, _multi_get, _keys, _del, _exists), so each changed record is one put. A restart reads the
state back with one get, one prefix listing and multi-gets of the listed keys.

Crash safety. The GCS has no transaction across keys, so a controller can die between two puts
of one pass. Every write of a pass still comes before any of its actions (write-ahead: `reconcile`
acts only after `persist` returns), so a partly written pass has acted on nothing, and what a
restart reads is the previous pass with some of this pass's decisions recorded:
- each node record is whole (one put) and is the node's previous record or its next one, a legal
  transition; a decision recorded but never acted on is acted on by the restarted controller
  because actions follow records, not edges: a REQUESTED record is relaunched with the same name
  (the client token) after RELAUNCH_AFTER_S, a TERMINATING one re-terminated after
  TERMINATE_RETRY_S, a DRAINING one terminated at its deadline; all idempotent;
- the fleet record is written first: a name's sequence number is durable before the name's record,
  so a restart never hands out a recorded name again, and replacement times and failure backoffs
  are recorded before the drains and launches they limit, so a partial pass can only make the
  rate limits stricter, never looser;
- a deleted record belongs to a node the provider no longer lists; if it were listed after all, the
  restarted controller adopts it by name.
The upgrade pass (the single-key layout was read) writes in the other order: every node record,
then the fleet record, then deletes the old key. The fleet record is what tells the new layout is
complete, so a crash before it leaves the old key to be read again, and records from the partial
pass that are not in it are deleted by the next write.

A put that raises may or may not have reached the GCS: its record is then remembered as unknown
and written again by the next pass.
"""
from __future__ import annotations

import json
from typing import Any

from rayfleet.cluster.decide.state import FleetState, NodeRecord
from rayfleet.cluster.rayio import gcs
from rayfleet.names import STATE_FLEET_KEY, STATE_KEY, STATE_NODE_PREFIX, instance_of_state_key, node_state_key

MULTI_GET_KEYS = 1000
"""Keys per multi-get on a restart: 1,000 records are about 0.4 MB, far below gRPC's message limit."""

_UNKNOWN = None  # on the store, content not known to this process: written or deleted again


class StateRecords:
    """Writes a FleetState as per-node records, each pass only what changed; reads it back."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._nodes: dict[str, NodeRecord | None] = {}  # instance -> the record last written
        self._fleet: str | None = None                   # the fleet record last written
        self._legacy = False                             # the single-key layout is still stored

    def read(self) -> FleetState:
        """The stored state (new layout, or the single-key one a previous release wrote); from
        here on, writes compare against it."""
        fleet = gcs.kv_get(self.client, STATE_FLEET_KEY)
        keys = gcs.kv_keys(self.client, STATE_NODE_PREFIX)
        legacy = gcs.kv_get(self.client, STATE_KEY) if fleet is None else None
        if legacy:
            self._legacy, self._fleet = True, None
            self._nodes = dict.fromkeys(map(instance_of_state_key, keys), _UNKNOWN)  # a partial upgrade's
            return FleetState.from_json(legacy)
        self._legacy = fleet is not None and gcs.kv_exists(self.client, STATE_KEY)  # upgraded, not yet deleted
        found: dict[str, bytes] = {}
        for start in range(0, len(keys), MULTI_GET_KEYS):
            found.update(gcs.kv_multi_get(self.client, keys[start:start + MULTI_GET_KEYS]))
        records = [NodeRecord.from_json(json.loads(found[key])) for key in sorted(found)]
        state = FleetState.from_parts(json.loads(fleet) if fleet else {}, records)
        self._nodes = dict(state.nodes)
        self._fleet = fleet.decode() if fleet else None
        return state

    def write(self, state: FleetState) -> None:
        """Make `state` the stored one, writing only what differs from the last write."""
        written, nodes = self._nodes, state.nodes
        # One identity check per node in a steady pass: plan keeps an unchanged record's object.
        changed = [record for instance, record in nodes.items()
                   if (last := written.get(instance)) is not record and (last is None or last != record)]
        gone = [instance for instance in written if instance not in nodes]
        fleet = state.fleet_json()
        if self._legacy:  # the upgrade pass: the fleet record last, it marks the layout complete
            self._put_nodes(changed)
            self._delete_nodes(gone)
            self._put_fleet(fleet)
            gcs.kv_delete(self.client, STATE_KEY)
            self._legacy = False
            return
        self._put_fleet(fleet)
        self._put_nodes(changed)
        self._delete_nodes(gone)

    def _put_fleet(self, fleet: str) -> None:
        if fleet == self._fleet:
            return
        self._fleet = _UNKNOWN
        gcs.kv_put(self.client, STATE_FLEET_KEY, fleet)
        self._fleet = fleet

    def _put_nodes(self, records: list[NodeRecord]) -> None:
        for record in records:
            self._nodes[record.instance] = _UNKNOWN
            gcs.kv_put(self.client, node_state_key(record.instance), json.dumps(record.to_json(), sort_keys=True))
            self._nodes[record.instance] = record

    def _delete_nodes(self, instances: list[str]) -> None:
        for instance in instances:
            self._nodes[instance] = _UNKNOWN
            gcs.kv_delete(self.client, node_state_key(instance))
            del self._nodes[instance]
