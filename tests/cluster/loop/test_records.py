"""The controller's state in the KV store: per-node records, only what changed, read back whole.

Counted through the in-memory KV store the simulator uses (cluster/sim/kv.py), which takes the
same calls as Ray's GCS client and tallies every put and delete.
"""
from __future__ import annotations

import dataclasses

import pytest

from rayfleet.cluster.decide.state import FleetState, NodeRecord, NodeState
from rayfleet.cluster.loop.store import FleetStore
from rayfleet.cluster.rayio import gcs
from rayfleet.cluster.sim.kv import MemoryKV
from rayfleet.names import STATE_FLEET_KEY, STATE_KEY, STATE_NODE_PREFIX, node_state_key


def fleet_state(nodes: int, pool: str = "h100") -> FleetState:
    records = {}
    for number in range(1, nodes + 1):
        name = f"f-{pool}-{number:04d}"
        records[name] = NodeRecord(name, pool, NodeState.READY, since=100.0 + number, reason="joined Ray",
                                   launched_at=float(number), node_id=f"{number:056x}", address="10.0.0.1",
                                   admitted=True, launch_attempts=1, last_action_at=float(number))
    return FleetState(nodes=records, sequence={pool: nodes}, pool_failures={pool: (2, 50.5)},
                      replacements={pool: (10.0, 20.0)}, demand_at={pool: 99.0})


def with_changes(state: FleetState, now: float, instances: list[str]) -> FleetState:
    nodes = dict(state.nodes)
    for instance in instances:
        nodes[instance] = nodes[instance].to(NodeState.TERMINATING, now, "lost: host failure")
    return dataclasses.replace(state, nodes=nodes)


def stored_nodes(kv: MemoryKV) -> list[str]:
    return sorted(key[len(STATE_NODE_PREFIX):] for key in gcs.kv_keys(kv, STATE_NODE_PREFIX))


def pass_tally(kv: MemoryKV, store: FleetStore, state: FleetState):
    before = dataclasses.replace(kv.tally)
    store.put_state(state)
    return kv.tally.since(before)


@pytest.mark.parametrize("nodes", [100, 2000])
def test_a_steady_pass_writes_nothing_and_a_changed_pass_writes_only_its_changes(nodes: int) -> None:
    kv = MemoryKV()
    store = FleetStore(kv)
    state = fleet_state(nodes)
    first = pass_tally(kv, store, state)
    assert first.puts == nodes + 1  # every record and the fleet record, once

    steady = pass_tally(kv, store, dataclasses.replace(state, nodes=dict(state.nodes)))  # equal, not identical
    assert (steady.puts, steady.deletes, steady.bytes) == (0, 0, 0)

    changed = with_changes(state, 200.0, ["f-h100-0003", "f-h100-0050"])
    tally = pass_tally(kv, store, changed)
    assert (tally.puts, tally.deletes) == (2, 0)
    assert tally.bytes < 1000  # two records of ~400 bytes, whatever the fleet's size
    assert tally.bytes * nodes / 2 < 2 * first.bytes  # each write is about one record's share


def test_the_bytes_of_a_pass_do_not_grow_with_the_fleet() -> None:
    written = {}
    for nodes in (100, 5000):
        kv = MemoryKV()
        store = FleetStore(kv)
        state = fleet_state(nodes)
        store.put_state(state)
        later = dataclasses.replace(with_changes(state, 200.0, ["f-h100-0007"]), demand_at={"h100": 200.0},
                                    sequence={"h100": 9999})  # as many digits at both sizes
        written[nodes] = pass_tally(kv, store, later).bytes
    assert written[100] == written[5000]


def test_a_restart_reads_back_the_identical_state() -> None:
    kv = MemoryKV()
    store = FleetStore(kv)
    state = fleet_state(30)
    store.put_state(state)
    changed = with_changes(state, 200.0, ["f-h100-0001"])
    nodes = dict(changed.nodes)
    nodes["f-h100-0031"] = NodeRecord("f-h100-0031", "h100", NodeState.REQUESTED, since=200.0, reason="replacement",
                                      launched_at=200.0, notice_deadline=None, spare=True)
    changed = dataclasses.replace(changed, nodes=nodes, sequence={"h100": 31, "a100": 2},
                                  pool_failures={}, replacements={"h100": (10.0, 20.0, 200.0)})
    store.put_state(changed)

    assert FleetStore(kv).state() == changed
    assert FleetStore(MemoryKV()).state() == FleetState()


def test_a_node_that_left_the_state_has_its_record_deleted() -> None:
    kv = MemoryKV()
    store = FleetStore(kv)
    state = fleet_state(5)
    store.put_state(state)
    nodes = {name: record for name, record in state.nodes.items() if name != "f-h100-0002"}
    tally = pass_tally(kv, store, dataclasses.replace(state, nodes=nodes))
    assert (tally.puts, tally.deletes) == (0, 1)
    assert "f-h100-0002" not in stored_nodes(kv) and len(stored_nodes(kv)) == 4
    assert FleetStore(kv).state().nodes == nodes


def test_the_single_key_layout_of_the_previous_release_is_read_once_then_rewritten() -> None:
    kv = MemoryKV()
    state = fleet_state(20)
    gcs.kv_put(kv, STATE_KEY, state.to_json())  # as the previous release's controller wrote it

    upgraded = FleetStore(kv)
    assert upgraded.state() == state
    upgraded.put_state(state)  # the first pass writes the new layout and deletes the old key
    assert gcs.kv_get(kv, STATE_KEY) is None
    assert len(stored_nodes(kv)) == 20 and gcs.kv_get(kv, STATE_FLEET_KEY) is not None
    assert FleetStore(kv).state() == state
    assert pass_tally(kv, upgraded, state).puts == 0  # from then on, only changes


def test_a_crash_in_the_middle_of_the_upgrade_pass_reads_the_old_layout_again() -> None:
    kv = MemoryKV()
    old = fleet_state(10)
    gcs.kv_put(kv, STATE_KEY, old.to_json())
    store = FleetStore(kv)
    store.state()
    nodes = dict(old.nodes)
    nodes["f-h100-0011"] = NodeRecord("f-h100-0011", "h100", NodeState.REQUESTED, since=200.0)
    decided = dataclasses.replace(old, nodes=nodes, sequence={"h100": 11})
    kv.fail_puts_after = 6
    with pytest.raises(ConnectionError):
        store.put_state(decided)

    kv.fail_puts_after = None
    restarted = FleetStore(kv)
    assert restarted.state() == old  # the new layout is not complete: its fleet record is missing
    restarted.put_state(old)
    assert stored_nodes(kv) == sorted(old.nodes)  # the partial pass's extra record is gone
    assert FleetStore(kv).state() == old and gcs.kv_get(kv, STATE_KEY) is None


def test_a_crash_between_two_records_of_a_pass_leaves_each_record_old_or_new_and_the_sequence_ahead() -> None:
    kv = MemoryKV()
    store = FleetStore(kv)
    state = fleet_state(10)
    store.put_state(state)
    nodes = dict(with_changes(state, 200.0, ["f-h100-0001", "f-h100-0002"]).nodes)
    for number in (11, 12):
        nodes[f"f-h100-{number:04d}"] = NodeRecord(f"f-h100-{number:04d}", "h100", NodeState.REQUESTED, since=200.0)
    decided = dataclasses.replace(state, nodes=nodes, sequence={"h100": 12})
    kv.fail_puts_after = 2  # the fleet record and one node record reach the store
    with pytest.raises(ConnectionError):
        store.put_state(decided)

    read = FleetStore(kv).state()
    assert read.sequence == {"h100": 12}  # no recorded name can be handed out again
    assert all(read.nodes[name] in (state.nodes.get(name), decided.nodes[name]) for name in read.nodes)
    assert sum(read.nodes.get(name) == decided.nodes[name] for name in decided.nodes) == 8 + 1  # 0001 written
    assert "f-h100-0011" not in read.nodes and read.nodes["f-h100-0002"] == state.nodes["f-h100-0002"]

    kv.fail_puts_after = None
    store.put_state(decided)  # the failed pass is written whole by the next one
    assert FleetStore(kv).state() == decided


def test_a_put_that_failed_is_written_again_even_if_the_next_pass_goes_back_to_the_old_record() -> None:
    kv = MemoryKV()
    store = FleetStore(kv)
    state = fleet_state(3)
    store.put_state(state)
    decided = with_changes(state, 200.0, ["f-h100-0001"])
    kv.fail_puts_after = 0
    with pytest.raises(ConnectionError):
        store.put_state(decided)  # the fleet record is unchanged; the node's put raised
    kv.fail_puts_after = None
    assert pass_tally(kv, store, state).puts == 1  # its outcome is unknown: written again
    assert FleetStore(kv).state() == state
    assert gcs.kv_get(kv, node_state_key("f-h100-0001")) is not None
