"""Processes rayfleet starts on this machine, and how it stops them: only its own, by their ids.

A started process is recorded as (pid, create time): a pid alone can be reused by an unrelated
process after ours exits, and rayfleet must never signal a process it did not start. Processes are
started detached (a new session, reparented to init) so that they outlive the short-lived CLI or a
restarting controller actor: Ray kills the child processes of an actor's worker when it exits.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import psutil

log = logging.getLogger(__name__)

_LAUNCHER = (
    "import subprocess, sys\n"
    "out = open(sys.argv[2], 'ab')\n"
    "p = subprocess.Popen(sys.argv[3:], start_new_session=True, stdout=out, stderr=subprocess.STDOUT,"
    " stdin=subprocess.DEVNULL, close_fds=True)\n"
    "sys.stdout.write(str(p.pid))\n"
)


@dataclass(frozen=True)
class Owned:
    """A process rayfleet started: its pid and the kernel's record of when it started."""

    pid: int
    create_time: float

    def alive(self) -> bool:
        return process_of(self) is not None

    def to_json(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, float]) -> Owned:
        return cls(pid=int(data["pid"]), create_time=float(data["create_time"]))


def process_of(owned: Owned) -> psutil.Process | None:
    """The live process for `owned`, or None if it exited (or its pid now names another process)."""
    try:
        process = psutil.Process(owned.pid)
        if abs(process.create_time() - owned.create_time) > 0.5:
            return None
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def spawn_detached(command: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None,
                   cwd: str | None = None) -> Owned:
    """Start `command` in a new session, reparented to init, output appended to `log_path`.

    A short-lived launcher does the Popen so that the process is not our child: it survives the
    caller, and Ray's cleanup of an actor's children never reaches it.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([sys.executable, "-c", _LAUNCHER, "-", str(log_path), *command],
                            capture_output=True, text=True, env=dict(env) if env is not None else None,
                            cwd=cwd, timeout=60, check=False)
    if result.returncode != 0 or not result.stdout.strip().isdigit():
        raise OSError(f"could not start {command[0]}: {result.stderr.strip()[-500:]}")
    pid = int(result.stdout.strip())
    try:
        create_time = psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        create_time = 0.0  # it already exited; callers see it as not alive and read its log
    return Owned(pid=pid, create_time=create_time)


def descendants(owned: Owned) -> list[Owned]:
    """The live descendants of an owned process, themselves owned (we started them, indirectly)."""
    process = process_of(owned)
    if process is None:
        return []
    found = []
    for child in process.children(recursive=True):
        try:
            found.append(Owned(child.pid, child.create_time()))
        except psutil.NoSuchProcess:
            continue
    return found


def signal_owned(owned: Owned, signum: int) -> bool:
    process = process_of(owned)
    if process is None:
        return False
    try:
        process.send_signal(signum)
        return True
    except psutil.NoSuchProcess:
        return False


def stop_tree(owned: Owned, grace_s: float = 10.0, extra: Sequence[Owned] = (),
              include_descendants: bool = True) -> None:
    """SIGTERM a process we own, wait up to `grace_s`, then SIGKILL it and every descendant.

    Descendants are listed before the first signal: once the parent exits they are reparented and
    can no longer be found through it. `extra` adds owned processes found some other way.
    """
    tree = [owned, *(descendants(owned) if include_descendants else ()), *extra]
    signal_owned(owned, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(member.alive() for member in tree):
        time.sleep(0.1)
    for member in tree:
        if signal_owned(member, signal.SIGKILL):
            log.info("killed pid %s after %.0fs grace", member.pid, grace_s)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(member.alive() for member in tree):
        time.sleep(0.05)


def find_by_marker(marker: str) -> list[Owned]:
    """Processes whose command line contains `marker` (e.g. a node's instance label).

    Used to find a process we spawned when a crash lost its pid file: the marker is unique to it.
    """
    found = []
    for process in psutil.process_iter(["pid", "cmdline", "create_time"]):
        try:
            cmdline = " ".join(process.info["cmdline"] or ())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if marker in cmdline:
            found.append(Owned(process.info["pid"], process.info["create_time"]))
    return found


def write_json_atomic(path: Path, data: object) -> None:
    """Write-then-rename so a crash never leaves half a file behind; readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def free_port(host: str = "127.0.0.1") -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
