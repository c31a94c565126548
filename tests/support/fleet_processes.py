"""The processes of a test fleet, found as an operator would find them: the node a process runs
on (named by the labels of its `ray start` ancestor), each node's raylet, the head supervisors;
and signalling a process tree the fleet started."""
from __future__ import annotations

import signal

import psutil

from rayfleet.cluster.head import supervisor as supervisor_module
from rayfleet.names import FLEET_LABEL, INSTANCE_LABEL
from tests.conftest import processes_of
from tests.support.fleet import Fleet


def _node_of(fleet: Fleet, process: psutil.Process) -> str | None:
    """The instance named by the nearest ancestor of `process` that carries node labels (the
    node's `ray start --labels=...`), if that node is one of `fleet`'s; None otherwise."""
    try:
        ancestor = process.parent()
        while ancestor is not None:
            cmdline = " ".join(ancestor.cmdline())
            if f"{INSTANCE_LABEL}=" in cmdline:  # the instance label ends --labels (providers/local.py)
                if f"{FLEET_LABEL}={fleet.name}," not in cmdline:
                    return None
                return cmdline.split(f"{INSTANCE_LABEL}=")[1].split()[0]
            ancestor = ancestor.parent()
    except psutil.Error:  # it or an ancestor ended meanwhile
        return None
    return None


def instance_of(fleet: Fleet, process: psutil.Process) -> str:
    """The instance of `fleet` whose node runs `process`."""
    instance = _node_of(fleet, process)
    if instance is None:
        raise AssertionError(f"pid {process.pid} is not on a node of {fleet.name}")
    return instance


def node_running(fleet: Fleet, marker: str) -> str:
    """The instance of `fleet` whose node runs a process named like `marker` (the first found)."""
    for process in processes_of(fleet.home, marker):
        instance = _node_of(fleet, process)
        if instance is not None:
            return instance
    raise AssertionError(f"no process named like {marker} on fleet {fleet.name}")


def raylets(fleet: Fleet) -> dict[str, int]:
    """instance -> pid of its live raylet, for every worker node of `fleet` (the head has none)."""
    found = {}
    for process in processes_of(fleet.home, "raylet"):
        if process.info["name"] == "raylet" and (instance := _node_of(fleet, process)) is not None:
            found[instance] = process.pid
    return found


def node_raylet(fleet: Fleet, instance: str) -> psutil.Process:
    """The live raylet of the node `instance` of `fleet`."""
    pid = raylets(fleet).get(instance)
    if pid is None:
        raise AssertionError(f"no raylet for {instance}")
    return psutil.Process(pid)


def supervisors(fleet: Fleet) -> list[int]:
    """Pids of every head supervisor running for this fleet's folder, whatever its records say (not
    the short-lived launcher that starts one, whose command line ends the same way)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if cmdline[1:3] == ["-m", supervisor_module.MODULE] and cmdline[-1:] == [str(fleet.dir)]:
            found.append(process.pid)
    return found


def kill_tree(pid: int, signum: int = signal.SIGKILL) -> None:
    """Signal a process the test's fleet started and all its descendants (SIGKILL unless told)."""
    root = psutil.Process(pid)
    for process in [root, *root.children(recursive=True)]:
        try:
            process.send_signal(signum)
        except psutil.Error:
            pass
