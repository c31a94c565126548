"""The local head's supervisor: `python -m rayfleet.cluster.head.supervisor FLEET_DIR`, started by `rayfleet up`.

It owns the head (`ray start --head --block`) and, with fault tolerance on and no external Redis,
a Redis server, and watches both every 0.5 s:
- Redis gone: started again with the same port, password and append-only file, so nothing is lost.
- head gone, fault tolerance on: started again with the same ports against the same Redis; the
  worker raylets reconnect (they wait `reconnect_timeout_s` for it) and keep their node ids. The
  old head node is then declared dead in the restarted GCS, so the actors that lived on it (the
  controller) restart at once instead of after Ray's health-check timeout.
- head gone, fault tolerance off: not restarted (a head without Redis is a new, empty cluster
  whose old raylets never re-register); the loss is recorded for `rayfleet status` to report.
- head gone before its node ever registered (`ray start` gives the raylet a fixed 30 s to register
  and exits when a loaded machine misses it): nothing was lost, so it is started again, up to
  HEAD_START_ATTEMPTS times in a row for a fleet's first start, without limit when fault tolerance
  is recovering a head that ran before. `rayfleet up` waits for the registered node, not for the
  GCS port alone, so it never hands out a head that is about to exit.

One supervisor runs per fleet folder: it holds an exclusive lock on `supervisor.lock` (which names
its pid) for its whole life, and a second one started for the same folder exits at once, so two
`up`s, or an `up` after one that was killed, never leave two heads or a supervisor `down` misses.
Its state (`supervisor.json` in the fleet folder) says what runs and what happened; its events go
to `logs/supervisor.log`. The Redis password lives in a 0600 file or the environment only: never
in supervisor.json, a log or a manifest.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from rayfleet.cluster.head.processes import Owned, process_of, stop_tree, write_json_atomic
from rayfleet.cluster.providers.local import inherited_environment
from rayfleet.names import FLEET_LABEL

log = logging.getLogger("rayfleet.supervisor")
POLL_S = 0.5
MODULE = "rayfleet.cluster.head.supervisor"  # run as `python -m MODULE FLEET_DIR`
LEGACY_MODULE = "cluster.supervisor"
"""How supervisors started before rayfleet became one package name themselves: `down` and `status`
still find a fleet's running supervisor after an upgrade."""
CONFIG = "supervisor-config.json"
STATE = "supervisor.json"
LOCK = "supervisor.lock"
ALREADY_RUNNING = 3  # exit code of a supervisor started beside the fleet's running one
HEAD_START_ATTEMPTS = 3
RETRY_BACKOFF_S = (0.0, 2.0, 5.0, 10.0, 30.0)  # wait before the 1st, 2nd, ... start again in a row; then 30 s


@dataclass
class Child:
    """A process the supervisor starts and restarts."""

    name: str
    command: list[str]
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    owned: Owned | None = None
    starts: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self, extra_args: list[str] | None = None, extra_env: dict[str, str] | None = None) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self.popen = subprocess.Popen([*self.command, *(extra_args or [])], stdout=out, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, env={**self.env, **(extra_env or {})},
                                          start_new_session=True, close_fds=True)
        self.owned = Owned(self.popen.pid, psutil.Process(self.popen.pid).create_time())
        self.starts += 1


class Supervisor:
    def __init__(self, fleet_dir: Path, lock_fd: int | None = None) -> None:
        self.fleet_dir = fleet_dir
        self.lock_fd = lock_fd  # the held supervisor.lock (main()); None where a test drives step()
        config = json.loads((fleet_dir / CONFIG).read_text())
        self.config = config
        self.fault_tolerant: bool = config["fault_tolerant"]
        self.password = _password(config)
        logs = fleet_dir / "logs"
        # a 0.1.0 fleet folder kept the whole environment ("head_env"); since, only what rayfleet sets
        head_env = config["head_env"] if "head_env" in config else {**inherited_environment(), **config["head_env_set"]}
        self.head = Child("head", config["head_command"], head_env, logs / "head.log")
        self.redis = Child("redis", ["redis-server", config["redis_conf"]], dict(os.environ),
                           logs / "redis-server.log") if config.get("redis_conf") else None
        self.events: list[dict[str, Any]] = []
        self.head_node_id: str | None = None
        self.previous_heads: set[str] = set()
        self.unforgotten: str | None = None  # a previous head node not yet declared dead
        self.head_lost_at: float | None = None
        self.ran = False  # some head of this fleet registered its node
        self.failed_starts = 0  # in a row; reset when a head registers
        self.restarts = 0  # starts after a head had run: fault tolerance's recoveries
        self.gave_up: str | None = None
        self.retry_at: float | None = None  # a failed head starts again at this monotonic time
        self.stopping = False

    # --- the loop -----------------------------------------------------------------------------
    def run(self) -> None:
        signal.signal(signal.SIGTERM, self._stop)
        while not self.stopping:
            if self.folder_gone():
                self.stop_what_it_started()
                return
            try:
                self.step()
            except Exception:  # keep supervising whatever one step hit
                log.exception("supervisor step failed")
            time.sleep(POLL_S)
        self.write_state()

    def folder_gone(self) -> bool:
        """Whether the fleet's folder was removed (or replaced) under this supervisor: the lock file
        it holds has no name any more. Its head is then out of every command's reach (the auth
        token, head.json and the node records went with the folder)."""
        if self.lock_fd is None:
            return False
        try:
            return os.fstat(self.lock_fd).st_ino != os.stat(self.fleet_dir / LOCK).st_ino
        except FileNotFoundError:
            return True

    def stop_what_it_started(self) -> None:
        """Stop the head and Redis this supervisor started, by their recorded pids, and write
        nothing more: an orphaned head would otherwise run until the machine stops."""
        log.warning("%s no longer holds this supervisor's lock file (the fleet's folder was removed): "
                    "stopping the head and Redis it started, then exiting", self.fleet_dir)
        for child in (self.head, self.redis):
            if child is not None and child.owned is not None:
                stop_tree(child.owned, grace_s=5.0)

    def _stop(self, *_: Any) -> None:
        self.stopping = True

    def step(self) -> None:
        if self.redis is not None and not self.redis.alive():
            first = self.redis.starts == 0
            if not first:
                self.event("redis-lost", "Redis exited; starting it again from its append-only file")
            self.redis.start()
            self.event("redis-started" if first else "redis-restarted", f"Redis pid {self.redis.popen.pid}")
            self.wait_for_redis()
        if not self.head.alive() and self.gave_up is None:
            if self.head.starts == 0:
                self.start_head()
            elif self.head_node_id is None:
                if self.retry_at is None:
                    self.head_start_failed()
                if self.retry_at is not None and time.monotonic() >= self.retry_at:
                    self.retry_at = None
                    self.start_head()
            elif self.fault_tolerant:
                if self.head_lost_at is None:
                    self.head_lost_at = time.time()
                    self.event("head-lost", "the head's processes are gone; restarting it against Redis")
                self.start_head()
                self.head_lost_at = None
            elif self.head_lost_at is None:
                self.head_lost_at = time.time()
                self.event("head-lost", "the head's processes are gone and fault tolerance is off: the cluster "
                                        "is lost (its state was in the head's memory); `rayfleet down`, then `up`")
        if self.head.alive() and self.head_node_id is None:
            self.learn_head_node()
        self.write_state()

    def head_start_failed(self) -> None:
        """The head exited before its node registered: say why (the log's last line) and schedule
        another start, or give up once a first start has failed HEAD_START_ATTEMPTS times. Starts in
        a row wait longer each time, so a head that fails at once (a taken port) is no tight loop."""
        self.failed_starts += 1
        why = last_line(self.head.log_path)
        if not self.ran and self.failed_starts >= HEAD_START_ATTEMPTS:
            self.gave_up = f"the head failed to start {self.failed_starts} times; the last said: {why}"
            self.event("head-failed", self.gave_up)
            return
        wait = RETRY_BACKOFF_S[min(self.failed_starts, len(RETRY_BACKOFF_S)) - 1]
        self.event("head-start-failed", f"the head exited before its node registered ({why}); "
                                        f"starting it again" + (f" in {wait:.0f}s" if wait else ""))
        self.retry_at = time.monotonic() + wait

    def start_head(self) -> None:
        if self.head_node_id is not None:
            self.previous_heads.add(self.head_node_id)
            self.unforgotten = self.head_node_id
        temp = Path(self.config["head_temp_dir"])
        # `ray start --head` refuses while a previous session's file names this address.
        (temp / "ray_current_cluster").unlink(missing_ok=True)
        extra = [f"--redis-password={self.password}"] if self.fault_tolerant else []
        self.restarts += self.ran
        self.head.start(extra)
        self.head_node_id = None
        info = {"gcs_address": self.config["gcs_address"], "dashboard_url": self.config["dashboard_url"],
                **(self.head.owned.to_json() if self.head.owned else {}), "started_at": time.time(),
                "restarts": self.restarts}
        write_json_atomic(self.fleet_dir / "head.json", info)
        kind = "head-restarted" if self.ran else "head-started"
        self.event(kind, f"head pid {self.head.popen.pid}" + (f" (restart {self.restarts})" if self.ran else ""))
        if self.unforgotten is not None and self.forget_old_head(self.unforgotten):
            self.unforgotten = None

    def forget_old_head(self, node_id: str) -> bool:
        """Once the restarted GCS answers, declare the old head node dead: the controller actor that
        lived there restarts now rather than after Ray's health-check timeout (~15-30 s)."""
        from rayfleet.cluster.rayio import gcs

        address = self.config["gcs_address"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not self.stopping:
            if gcs.reachable(address, timeout_s=0.5):
                try:
                    gcs.declare_dead(address, node_id, "rayfleet: the head restarted")
                    self.event("old-head-forgotten", f"declared the previous head node {node_id[:12]} dead")
                    return True
                except Exception as error:  # the GCS is still loading from Redis: try again
                    log.info("old head not declared dead yet: %s", error)
            if not self.head.alive():
                return False  # this start failed too; the next one tries again
            time.sleep(0.25)
        return False

    def learn_head_node(self) -> None:
        from rayfleet.cluster.rayio import gcs

        if not gcs.reachable(self.config["gcs_address"], timeout_s=0.5):
            return
        try:
            client = gcs.client(self.config["gcs_address"], timeout_s=5)
            heads = [n for n in gcs.read_nodes(client) if n.is_head and n.alive
                     and n.labels.get(FLEET_LABEL) == self.config["fleet"]]
        except Exception:
            return
        current = [n for n in heads if n.node_id not in self.previous_heads]
        if current:
            self.head_node_id = current[0].node_id
            self.ran, self.failed_starts = True, 0

    def wait_for_redis(self) -> None:
        import socket

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", int(self.config["redis_port"])), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)

    # --- record ---------------------------------------------------------------------------------
    def event(self, kind: str, message: str) -> None:
        entry = {"time": time.time(), "kind": kind, "message": message}
        self.events = [*self.events[-99:], entry]
        log.info("%s: %s", kind, message)

    def write_state(self) -> None:
        write_json_atomic(self.fleet_dir / STATE, {
            "pid": os.getpid(), "updated_at": time.time(), "fault_tolerant": self.fault_tolerant,
            "head": {"alive": self.head.alive(), "owned": self.head.owned.to_json() if self.head.owned else None,
                     "restarts": self.restarts, "lost_at": self.head_lost_at,
                     "node_id": self.head_node_id, "failed_starts": self.failed_starts, "gave_up": self.gave_up},
            "redis": None if self.redis is None else {
                "alive": self.redis.alive(), "owned": self.redis.owned.to_json() if self.redis.owned else None,
                "restarts": max(0, self.redis.starts - 1), "port": self.config["redis_port"]},
            "events": self.events[-20:],
        })


def last_line(path: Path) -> str:
    """The last non-empty line of a log, for an event message."""
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except FileNotFoundError:
        return "no log"
    return lines[-1][-300:] if lines else "empty log"


def _password(config: dict[str, Any]) -> str | None:
    if not config["fault_tolerant"]:
        return None
    if config.get("password_env"):
        value = os.environ.get(config["password_env"])
        if not value:
            raise SystemExit(f"the Redis password variable {config['password_env']} is not set")
        return value
    return Path(config["password_file"]).read_text().strip()


def read_state(fleet_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((fleet_dir / STATE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def supervisor_process(fleet_dir: Path) -> Owned | None:
    """The running supervisor of this fleet, if any: the pid its lock file names, while that
    process is a supervisor of this folder (a pid reused by something else is not it)."""
    try:
        pid = int((fleet_dir / LOCK).read_text().strip())
        process = psutil.Process(pid)
        owned = Owned(pid, process.create_time())
        cmdline = process.cmdline()
    except (FileNotFoundError, ValueError, psutil.Error):
        return None
    mine = len(cmdline) > 3 and cmdline[1] == "-m" and cmdline[2] in (MODULE, LEGACY_MODULE) \
        and Path(cmdline[-1]).resolve() == fleet_dir.resolve()
    if process_of(owned) is None or not mine:
        return None
    return owned


def head_in_progress(fleet_dir: Path) -> bool:
    """Whether a supervisor of this fleet is at work on a head: running one, starting one that an
    earlier, stopped `up` asked for, or restarting one (fault tolerance). Not one it gave up on,
    nor one lost for good."""
    if supervisor_process(fleet_dir) is None or not (fleet_dir / CONFIG).exists():
        return False
    state = read_state(fleet_dir) or {}
    head = state.get("head") or {}
    return not head.get("gave_up") and not (head.get("lost_at") and not state.get("fault_tolerant"))


def hold_lock(fleet_dir: Path, name: str = LOCK) -> int | None:
    """Take the fleet's supervisor lock (or another process's lock `name` in the folder) and write
    this pid into it; None if another process holds it. The lock goes with the process, however it ends."""
    fd = os.open(fleet_dir / name, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    text = f"{os.getpid()}\n".encode()
    os.pwrite(fd, text, 0)  # then cut: a reader sees the old pid or this one, never an empty file
    os.ftruncate(fd, len(text))
    return fd


def main() -> None:
    fleet_dir = Path(sys.argv[1])
    (fleet_dir / "logs").mkdir(parents=True, exist_ok=True)
    logging.basicConfig(filename=fleet_dir / "logs" / "supervisor.log", level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s")
    lock = hold_lock(fleet_dir)
    if lock is None:
        log.error("another supervisor (pid %s) runs for %s; this one exits", (fleet_dir / LOCK).read_text().strip(),
                  fleet_dir)
        sys.exit(ALREADY_RUNNING)
    Supervisor(fleet_dir, lock).run()


if __name__ == "__main__":
    main()
