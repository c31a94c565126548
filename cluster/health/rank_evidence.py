"""What a node's health agent reads of a training rank when its job hangs (the controller asks;
jobs/supervision/attribution.py weighs it): the process's state, its step counters, its
collectives (the flight recorder) and its stacks."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from rayfleet.cluster.health import flight_recorder, stepmarks


def inspect(pid: int) -> dict[str, Any]:
    """The rank's process state (psutil's name, or "gone"), its step counters (stepmarks.py) and
    its newest collectives (flight_recorder.py; a rank that does not answer costs its timeout)."""
    import psutil

    try:
        state = psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        state = "gone"
    except psutil.Error as error:
        state = f"unreadable: {error}"
    collectives = flight_recorder.read(pid) if state != "gone" else {"answered": False}
    return {"state": state, "marks": stepmarks.read(pid), "collectives": collectives}


def dump_stacks(pid: int, timeout_s: float = 20.0) -> str:
    """Every Python thread's stack of process `pid`, through py-spy (which reads the process's
    memory without stopping it; a SIGSTOPped process is read the same way)."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    try:
        result = subprocess.run([py_spy, "dump", "--nonblocking", "--pid", str(pid)], capture_output=True,
                                text=True, timeout=timeout_s)
        return result.stdout if result.returncode == 0 else f"py-spy failed ({result.returncode}): {result.stderr}"
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"py-spy could not run: {error}"
