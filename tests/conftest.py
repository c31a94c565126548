"""Shared test helpers: run the real CLI, wait on conditions with deadlines, find our processes."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, TypeVar

import psutil

ROOT = Path(__file__).resolve().parents[1]
RAYFLEET = str(Path(sys.executable).with_name("rayfleet"))
T = TypeVar("T")


def rayfleet(*args: str, home: Path | None = None, timeout: float = 600, env: dict | None = None,
             ) -> subprocess.CompletedProcess[str]:
    """Run the `rayfleet` console script as a user would, on this checkout's code (PYTHONPATH: the
    script may be installed from another checkout; the fleet's processes inherit it too)."""
    return subprocess.run([RAYFLEET, *args], capture_output=True, text=True, timeout=timeout,
                          env=rayfleet_env(home, env), cwd=ROOT)


def start_rayfleet(*args: str, home: Path) -> subprocess.Popen[str]:
    """`rayfleet` in the background, for a test that acts while the command runs."""
    return subprocess.Popen([RAYFLEET, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=rayfleet_env(home), cwd=ROOT)


def rayfleet_env(home: Path | None, env: dict | None = None) -> dict[str, str]:
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), full_env.get("PYTHONPATH")]))
    if home is not None:
        full_env["RAYFLEET_HOME"] = str(home)
    return full_env


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.2) -> T:
    """Poll `predicate` until it returns something truthy; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as error:  # keep polling; report the last error if we time out
            last_error = error
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}"
                         + (f" (last error: {last_error!r})" if last_error else ""))


def processes_of(home: Path, name: str | None = None) -> list[psutil.Process]:
    """Live processes started under RAYFLEET_HOME=`home` (a fleet's head, nodes, raylets and Ray
    workers all inherit it: cluster/providers/local.py, node_environment), optionally only those
    whose name contains `name`. Tests that run side by side (pytest -n) see only their own fleet."""
    found = []
    for process in psutil.process_iter(["name"]):
        if name is not None and name not in (process.info["name"] or ""):
            continue
        try:
            if process.environ().get("RAYFLEET_HOME") == str(home):
                found.append(process)
        except psutil.Error:  # ended meanwhile, or not ours to read
            pass
    return found


def ray_daemon_pids(home: Path) -> set[int]:
    """raylet and gcs_server processes of the fleets under RAYFLEET_HOME=`home`."""
    return {p.pid for name in ("raylet", "gcs_server") for p in processes_of(home, name) if p.info["name"] == name}
