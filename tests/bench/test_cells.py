"""bench/cells.py's core at a tiny size: the JSON it writes has its shape, more cells mean a
shorter per-cell loop, and a lost cell's jobs all run again on the others."""
from __future__ import annotations

import importlib.util
import json
from types import ModuleType

import pytest

from tests.conftest import ROOT


def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_cells", ROOT / "bench" / "cells.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_bench_core_at_a_tiny_size(capsys: pytest.CaptureFixture[str]) -> None:
    cells = bench()
    results = json.loads(json.dumps(cells.run(total_nodes=240, cell_counts=[1, 6], loops=40, job_nodes=4)))
    one, six = results["rows"]
    assert (one["cells"], one["nodes_per_cell"], six["cells"], six["nodes_per_cell"]) == (1, 240, 6, 40)
    for row in (one, six):
        assert row["placement"]["jobs"] == 45 and row["placement"]["unplaced"] == 0
        assert row["placement"]["running"] == 45
        assert {"p50_ms", "p99_ms"} <= set(row["steady"]["cpu_loop"])
        assert row["steady"]["bytes_full"]["mean"] > 0 and row["incident"]["failed_nodes"] >= 1
        assert row["incident"]["bytes_per_loop_max"] > 0
        assert set(row["vs_one_cell"]) >= {"loop_cpu_p99", "full_write_bytes", "placement_per_job_p50"}
        assert row["targets"]["steady_bytes_under_1pct_of_full"] is True
    assert six["steady"]["cpu_loop"]["p50_ms"] < one["steady"]["cpu_loop"]["p50_ms"]
    assert six["steady"]["bytes_full"]["mean"] < one["steady"]["bytes_full"]["mean"]
    assert one["lost_cell"] is None
    lost = six["lost_cell"]
    assert lost["moved"] == lost["jobs"] > 0 and lost["no_cell"] == 0
    # notice and wait (61 s), the decisions, then the restart from checkpoint (120 s)
    assert 181 <= lost["every_job_runs_again_after_s"] < 182
    assert six["cell_fleet_names"][:2] == ["bench-c1", "bench-c2"]
    cells.print_table(results)
    assert "lost cell" in capsys.readouterr().out
