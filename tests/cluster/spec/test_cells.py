"""Fleet cells: a spec without cells is one cell, itself; explicit cells and max_nodes_per_cell
give complete one-cell FleetSpecs; every kind of bad cell input is refused naming file, field,
value and fix."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from rayfleet.cluster.spec.cell_split import pack, piece_count
from rayfleet.cluster.spec.cells import fleet_cells
from rayfleet.cluster.spec.fleet import FleetSpec, load_fleet_spec
from rayfleet.errors import BadInput
from tests.support.specs import fleet_spec, h100_pool

AMI, SUBNET, SUBNET_B = "ami-0a1b2c3d4e5f60718", "subnet-0a1b2c3d4e5f60718", "subnet-0b1b2c3d4e5f60718"


def aws_pool(name: str, **fields: Any) -> dict[str, Any]:
    return h100_pool(name=name, provider={"aws": {"instance_type": "p5.48xlarge", "ami": AMI,
                                                  "subnet_ids": [SUBNET]}}, **fields)


def test_a_spec_without_cells_is_one_cell_the_spec_itself() -> None:
    spec = fleet_spec(h100_pool(max_nodes=4))
    (cell,) = fleet_cells(spec)
    assert cell.name == "" and cell.spec is spec


def test_max_nodes_per_cell_that_holds_the_fleet_is_one_cell_as_today() -> None:
    spec = fleet_spec(h100_pool(max_nodes=4, hot_spares=1), max_nodes_per_cell=5)
    (cell,) = fleet_cells(spec)
    assert cell.name == "" and cell.spec.name == "t"
    assert cell.spec == fleet_spec(h100_pool(max_nodes=4, hot_spares=1))


def test_explicit_cells_run_their_pools_under_fleet_dash_cell() -> None:
    spec = fleet_spec(h100_pool(max_nodes=4), h100_pool(name="a100", accelerator="A100", max_nodes=2),
                      h100_pool(name="cpu", accelerator=None, gpus_per_node=0), name="big",
                      cells=[{"name": "east", "pools": ["a100", "h100"]}, {"name": "west", "pools": ["cpu"]}])
    east, west = fleet_cells(spec)
    assert (east.name, east.spec.name, east.pools) == ("east", "big-east", ("h100", "a100"))  # the spec's order
    assert (west.name, west.spec.name, west.pools) == ("west", "big-west", ("cpu",))
    for cell in (east, west):
        assert cell.spec.cells is None and cell.spec.max_nodes_per_cell is None
        assert cell.spec.scaling == spec.scaling and cell.spec.health == spec.health
    assert east.spec.pool("h100") == spec.pool("h100")


def test_aws_cells_take_their_region_and_subnets() -> None:
    spec = fleet_spec(aws_pool("h100", max_nodes=4), aws_pool("h200", max_nodes=4), provider="aws",
                      aws={"region": "us-east-1"},
                      cells=[{"name": "use1", "pools": ["h100"]},
                             {"name": "usw2", "pools": ["h200"], "region": "us-west-2", "subnet_ids": [SUBNET_B]}])
    use1, usw2 = fleet_cells(spec)
    assert use1.spec.aws is not None and use1.spec.aws.region == "us-east-1"
    assert usw2.spec.aws is not None and usw2.spec.aws.region == "us-west-2"
    assert usw2.spec.pool("h200").provider.aws.subnet_ids == [SUBNET_B]
    assert use1.spec.pool("h100").provider.aws.subnet_ids == [SUBNET]


def test_kubernetes_cells_take_their_cluster_context_and_namespace() -> None:
    spec = fleet_spec(h100_pool(max_nodes=2), h100_pool(name="b", max_nodes=2), provider="kubernetes",
                      kubernetes={"namespace": "ml"},
                      cells=[{"name": "k1", "pools": ["h100"], "context": "gke-1"},
                             {"name": "k2", "pools": ["b"], "context": "gke-2", "namespace": "ml2"}])
    k1, k2 = fleet_cells(spec)
    assert (k1.spec.kubernetes.context, k1.spec.kubernetes.namespace) == ("gke-1", "ml")
    assert (k2.spec.kubernetes.context, k2.spec.kubernetes.namespace) == ("gke-2", "ml2")


def test_max_nodes_per_cell_splits_a_large_pool_into_even_cells() -> None:
    spec = fleet_spec(h100_pool(min_nodes=10, nodes=12500, max_nodes=12500, hot_spares=16),
                      name="big", max_nodes_per_cell=2504)
    cells = fleet_cells(spec)
    assert [cell.spec.name for cell in cells] == [f"big-c{i}" for i in range(1, 6)]
    pools = [cell.spec.pool("h100") for cell in cells]
    assert [p.nodes for p in pools] == [2500] * 5 and [p.max_nodes for p in pools] == [2500] * 5
    assert [p.min_nodes for p in pools] == [2] * 5
    assert sorted(p.hot_spares for p in pools) == [3, 3, 3, 3, 4]
    assert all(p.max_nodes + p.hot_spares <= 2504 for p in pools)


def test_small_pools_fill_the_room_the_pieces_of_large_ones_leave() -> None:
    spec = fleet_spec(h100_pool(max_nodes=5), h100_pool(name="b", max_nodes=1), h100_pool(name="c", max_nodes=2),
                      max_nodes_per_cell=3)
    assert [cell.pools for cell in fleet_cells(spec)] == [("h100",), ("h100", "b"), ("c",)]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 50), st.integers(0, 8)), min_size=1, max_size=4),
       st.integers(1, 40), st.data())
def test_every_split_keeps_counts_caps_and_bounds(sizes: list[tuple[int, int, int]], cap: int,
                                                  data: st.DataObject) -> None:
    pools = []
    for index, (low, extra, spares) in enumerate(sizes):
        nodes = data.draw(st.integers(low, low + extra))
        pools.append(h100_pool(name=f"p{index}", min_nodes=low, max_nodes=low + extra, nodes=nodes, hot_spares=spares))
    spec = fleet_spec(*pools, name="f", max_nodes_per_cell=cap)
    cells = fleet_cells(spec)
    for cell in cells:
        assert sum(p.max_nodes + p.hot_spares for p in cell.spec.pools) <= cap or len(cells) == 1
        assert len(set(cell.pools)) == len(cell.pools)
    for pool in spec.pools:  # validation of each cell's FleetSpec ran; the shares add up to the pool
        pieces = [c.spec.pool(pool.name) for c in cells if pool.name in c.pools]
        for field in ("min_nodes", "max_nodes", "hot_spares", "nodes"):
            assert sum(getattr(p, field) for p in pieces) == getattr(pool, field), field
        assert len(pieces) == piece_count(pool.max_nodes + pool.hot_spares, cap)


def test_the_split_is_deterministic() -> None:
    pools = [("a", 10, 2), ("b", 3, 0), ("c", 7, 1)]
    assert pack(pools, 5) == pack(list(pools), 5)


GOOD = {"name": "f", "pools": [h100_pool(max_nodes=4), h100_pool(name="b", max_nodes=2)]}

# (what is wrong, changes to GOOD, the field path the message must name, words the fix must contain)
BAD: list[tuple[str, dict[str, Any], str, str]] = [
    ("duplicate cell names", {"cells": [{"name": "x", "pools": ["h100"]}, {"name": "x", "pools": ["b"]}]},
     "cells[1].name", "its own name"),
    ("a pool in two cells", {"cells": [{"name": "x", "pools": ["h100", "b"]}, {"name": "y", "pools": ["b"]}]},
     "cells[1].pools[0]", "a pool belongs to one cell"),
    ("a pool in no cell", {"cells": [{"name": "x", "pools": ["h100"]}]}, "cells", "add it to one cell's pools"),
    ("an unknown pool", {"cells": [{"name": "x", "pools": ["h100", "b", "zz"]}]}, "cells[0].pools[2]",
     "use one of h100, b"),
    ("no cells", {"cells": []}, "cells", "at least one"),
    ("a cell without pools", {"cells": [{"name": "x", "pools": []}]}, "cells[0].pools", "at least one"),
    ("max_nodes_per_cell zero", {"max_nodes_per_cell": 0}, "max_nodes_per_cell", "at least 1"),
    ("max_nodes_per_cell negative", {"max_nodes_per_cell": -3}, "max_nodes_per_cell", "at least 1"),
    ("min_nodes cannot fit", {"pools": [h100_pool(min_nodes=3, max_nodes=4), h100_pool(name="b", max_nodes=2)],
                              "max_nodes_per_cell": 2,
                              "cells": [{"name": "x", "pools": ["h100"]}, {"name": "y", "pools": ["b"]}]},
     "cells[0].pools", "cannot fit in max_nodes_per_cell"),
    ("max_nodes above the cap", {"max_nodes_per_cell": 3,
                                 "cells": [{"name": "x", "pools": ["h100"]}, {"name": "y", "pools": ["b"]}]},
     "cells[0].pools", "exceed max_nodes_per_cell"),
    ("region on a local fleet", {"cells": [{"name": "x", "pools": ["h100", "b"], "region": "us-west-2"}]},
     "cells[0].region", "is for provider aws"),
    ("a cell name too long", {"cells": [{"name": "a" * 31, "pools": ["h100", "b"]}]}, "cells[0].name",
     "shorten"),
    ("a bad cell name", {"cells": [{"name": "East_1", "pools": ["h100", "b"]}]}, "cells[0].name", "lower-case"),
    ("one head port for local cells", {"head": {"port": 6390}, "max_nodes_per_cell": 3}, "head.port",
     "leave it empty"),
    ("one head address for cells", {"head": {"address": "10.0.0.5:6379"}, "max_nodes_per_cell": 3}, "head.address",
     "head_address"),
    ("a typo in a cell", {"cells": [{"name": "x", "pool": ["h100"]}]}, "cells[0].pool", "did you mean 'pools'"),
    ("a zero wait for a lost head", {"max_nodes_per_cell": 3, "federation": {"head_lost_wait_s": 0}},
     "federation.head_lost_wait_s", "must be more than 0"),
    ("a wait that is not a number", {"max_nodes_per_cell": 3, "federation": {"fault_tolerant_wait_s": "soon"}},
     "federation.fault_tolerant_wait_s", "number"),
    ("a typo in the federation", {"federation": {"head_lost_wait": 5}}, "federation.head_lost_wait",
     "head_lost_wait_s"),
]


@pytest.mark.parametrize("what,changes,field,fix", BAD, ids=[case[0] for case in BAD])
def test_bad_cells_name_file_field_value_and_fix(tmp_path: Path, what: str, changes: dict[str, Any], field: str,
                                                 fix: str) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump({**GOOD, **changes}))
    with pytest.raises(BadInput) as caught:
        load_fleet_spec(path)
    message = str(caught.value)
    assert str(path) in message and f"{field}:" in message and fix in message, message


@pytest.mark.parametrize("cells,got", [
    ([{"name": "x", "pools": ["h100"]}, {"name": "x", "pools": ["b"]}], "cells[1].name: got 'x': "),
    ([{"name": "x", "pools": ["h100", "b", "zz"]}], "cells[0].pools[2]: got 'zz': "),
    ([{"name": "x", "pools": ["h100", "b"]}, {"name": "y", "pools": ["b"]}], "cells[1].pools[0]: got 'b': ")])
def test_the_bad_value_is_quoted_once(tmp_path: Path, cells: list[dict[str, Any]], got: str) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump({**GOOD, "cells": cells}))
    with pytest.raises(BadInput) as caught:
        load_fleet_spec(path)
    message = str(caught.value)
    assert got in message and message.count(got.split("got ")[1].rstrip(": ")) == 1, message


def test_the_schema_describes_cells_and_accepts_a_spec_with_them() -> None:
    import jsonschema

    schema = FleetSpec.model_json_schema()
    assert "cells" in schema["properties"] and "max_nodes_per_cell" in schema["properties"]
    assert schema["properties"]["max_nodes_per_cell"]["description"]
    assert all(field.get("description") for field in schema["$defs"]["FederationSpec"]["properties"].values())
    assert all(field.get("description") for name, field in schema["$defs"]["CellSpec"]["properties"].items())
    validator = jsonschema.Draft202012Validator(schema)
    good = {**GOOD, "cells": [{"name": "x", "pools": ["h100"]}, {"name": "y", "pools": ["b"]}]}
    assert list(validator.iter_errors(good)) == []
    assert list(validator.iter_errors({**GOOD, "max_nodes_per_cell": 0}))


def test_the_federation_policy_reaches_no_cell_and_defaults_to_the_decisions_waits() -> None:
    from rayfleet.cluster.decide.federation import FederationPolicy

    spec = FleetSpec.model_validate({**GOOD, "max_nodes_per_cell": 3, "federation": {"head_lost_wait_s": 5}})
    assert spec.federation_policy.head_lost_wait_s == 5 and spec.federation_policy.fault_tolerant_wait_s == 240
    assert all(cell.spec.federation == FleetSpec.model_validate(GOOD).federation for cell in fleet_cells(spec))
    default = FleetSpec.model_validate(GOOD).federation_policy
    policy = FederationPolicy()
    assert (default.head_lost_wait_s, default.fault_tolerant_wait_s) == (policy.head_lost_wait_s,
                                                                        policy.fault_tolerant_wait_s)
