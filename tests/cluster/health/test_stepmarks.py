"""A rank's step counters in shared memory (cluster/health/stepmarks.py): exact at every moment,
readable by another process even while the rank is stopped, and swept once it is gone."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import psutil

from rayfleet.cluster.health import stepmarks
from tests.conftest import wait_until


def test_another_process_reads_a_stopped_ranks_counters_exactly() -> None:
    code = textwrap.dedent("""
        import sys, time
        from rayfleet.cluster.health.stepmarks import StepMarks
        marks = StepMarks()
        for step in range(1, 8):
            marks.started(step)
            marks.finished(step)
        marks.started(8)  # inside step 8 now
        print("ready", flush=True)
        time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        os.kill(child.pid, signal.SIGSTOP)
        wait_until(lambda: psutil.Process(child.pid).status() == psutil.STATUS_STOPPED, 10, "the child stopped")
        seen = stepmarks.read(child.pid)
        assert seen is not None and (seen["started"], seen["finished"]) == (8, 7)
        assert seen["started_at"] >= seen["finished_at"] > 0
    finally:
        child.kill()
        child.wait(timeout=10)
    assert stepmarks.path_of(child.pid).exists()  # a killed rank leaves its file ...
    assert stepmarks.sweep() >= 1 and not stepmarks.path_of(child.pid).exists()  # ... until the agent sweeps it
    assert stepmarks.read(child.pid) is None


def test_a_closed_rank_leaves_nothing_and_a_process_without_counters_reads_none() -> None:
    marks = stepmarks.StepMarks()
    marks.started(1)
    seen = stepmarks.read(os.getpid())
    assert seen is not None and (seen["started"], seen["finished"], seen["finished_at"]) == (1, -1, 0.0)
    marks.close()
    assert not marks.path.exists() and stepmarks.read(os.getpid()) is None
