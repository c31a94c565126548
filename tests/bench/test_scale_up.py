"""bench/scale_up.py's core at a small size: the JSON it writes has its shape, no scale-up beats the
limit that binds it, and cells in their own regions launch sooner than cells sharing one."""
from __future__ import annotations

import importlib.util
import json
from types import ModuleType

from tests.conftest import ROOT


def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_scale_up", ROOT / "bench" / "scale_up.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_bench_core_at_a_small_size() -> None:
    scale_up = bench()
    results = json.loads(json.dumps(scale_up.run(nodes=300, cell_counts=[3], call_s=0.1)))
    rows = {row["scenario"]: row for row in results["rows"]}
    assert set(rows) == {"one cell, defaults", "one cell, upscaling_speed 1000", "3 cells, one region",
                         "3 cells, 3 regions", "3 cells, 3 regions, upscaling_speed 1000"}
    for row in rows.values():
        assert sum(row["nodes_per_cell"]) == 300
        assert row["last_launch_s"] >= max(row["launch_bounds_s"].values()) - 1.0  # no limit is beaten
        assert row["all_ready_s"] >= row["last_launch_s"] + results["boot_s"]
        launched = sum(region["calls"].get("RunInstances", 0) - region["throttled"].get("RunInstances", 0)
                       for region in row["api"].values())
        assert launched == 300
    one = rows["one cell, defaults"]
    assert one["bound_by"] == "loop" and one["launch_bounds_s"]["loop"] == (300 // 16) * 5.0
    assert rows["one cell, upscaling_speed 1000"]["bound_by"] == "request bucket"  # 250 calls past the burst at 5/s: 50 s, the calls 30 s
    assert rows["3 cells, 3 regions"]["last_launch_s"] < rows["3 cells, one region"]["last_launch_s"] <= one["last_launch_s"]
    assert len(rows["3 cells, 3 regions"]["api"]) == 3 and len(rows["3 cells, one region"]["api"]) == 1
