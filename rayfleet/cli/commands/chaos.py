"""`rayfleet chaos kill-node|inject|preempt NODE`: fault injection.

On a fleet of cells, NODE is looked for in every cell (an instance name belongs to one cell:
`<fleet>-<cell>-<pool>-NNNN`) and the command goes to that cell.

kill-node SIGKILLs every process of a local node (raylet, agents, workers) at once. inject writes
the node's simulated GPU telemetry only: it never touches a real GPU's state. preempt gives the
node's agent a simulated notice that the node goes away.
"""
from __future__ import annotations

import json
from typing import Any, Optional

import typer

from rayfleet.cli.app import app
from rayfleet.cli.cells import node_fleet
from rayfleet.cli.output import Format, console, emit
from rayfleet.cluster.rayio.connection import connect, ray_driver
from rayfleet.errors import BadInput, NotFound
from rayfleet.cluster.health.telemetry import FAULTS

chaos = typer.Typer(help="Inject faults: kill a node, or simulate a GPU fault on it.", no_args_is_help=True)
app.add_typer(chaos, name="chaos")


def _known_node(conn: object, node: str) -> None:
    status = conn.store.status() or {"nodes": []}  # type: ignore[attr-defined]
    names = [n["instance"] for n in status["nodes"]]
    if node not in names:
        raise NotFound(f"chaos: no node {node!r} in the fleet; nodes: {', '.join(names) or 'none'}")


def _agent(command: str, node: str) -> Any:
    """NODE's health agent (call inside `ray_driver`)."""
    import ray

    from rayfleet.names import NAMESPACE
    from rayfleet.cluster.health.agent import agent_name

    try:
        return ray.get_actor(agent_name(node), namespace=NAMESPACE)
    except ValueError:
        raise NotFound(f"chaos {command}: {node} has no health agent yet; wait until it is ready") from None


@chaos.command("kill-node")
def kill_node(node: str = typer.Argument(..., help="instance name (see `rayfleet status`)"),
              fleet_name: Optional[str] = typer.Option(None, "--fleet")) -> None:
    """SIGKILL the node's raylet, agents and workers at once (a hard node death)."""
    from rayfleet.cluster.providers import make_provider
    from rayfleet.cluster.spec.fleet import load_fleet_spec

    conn = connect(node_fleet(fleet_name, node, "chaos kill-node"))
    _known_node(conn, node)
    spec = load_fleet_spec(conn.fleet.spec_file)
    if not spec.capabilities.nodes_on_this_machine:
        raise BadInput(f"chaos kill-node: fleet {spec.name} runs on {spec.provider}; kill-node kills local "
                       "nodes' processes (terminate the instance through your cloud to do the same there)")
    provider = make_provider(spec, json.loads((conn.fleet.path / "runtime.json").read_text()))
    count = provider.kill(node)  # type: ignore[attr-defined]
    console.print(f"killed {count} processes of {node}")


@chaos.command("inject")
def inject(node: str = typer.Argument(..., help="instance name (see `rayfleet status`)"),
           fault: str = typer.Option(..., "--fault", help=f"{' | '.join(FAULTS)} | clear"),
           gpu: int = typer.Option(0, "--gpu", help="which GPU of the node"),
           output: Format = typer.Option(Format.table, "-o", "--output"),
           fleet_name: Optional[str] = typer.Option(None, "--fleet")) -> None:
    """Make NODE's simulated telemetry show a fault (or clear it); its agent reports at once."""
    import ray

    if fault not in (*FAULTS, "clear"):
        raise BadInput(f"chaos inject --fault: got {fault!r}; one of {', '.join(FAULTS)} or clear")
    conn = connect(node_fleet(fleet_name, node, "chaos inject"))
    _known_node(conn, node)
    with ray_driver(conn.gcs_address):
        try:
            report = ray.get(_agent("inject", node).inject.remote(fault, gpu), timeout=60)
        except ray.exceptions.RayTaskError as error:
            raise BadInput(f"chaos inject {node}: {error.cause}") from None
    failing = [c for c in report["checks"] if c["status"] != "ok"]
    if not emit({"node": node, "fault": fault, "checks": failing}, output):
        console.print(f"{node}: {fault} injected; its checks now: "
                      + ("; ".join(f"{c['name']} {c['status']}: {c['message']}" for c in failing) or "all ok"))


@chaos.command("preempt")
def preempt(node: str = typer.Argument(..., help="instance name (see `rayfleet status`)"),
            seconds: float = typer.Option(30.0, "--in", help="seconds until the node goes away"),
            fleet_name: Optional[str] = typer.Option(None, "--fleet")) -> None:
    """Announce that NODE goes away in SECONDS, as a spot interruption would: its jobs checkpoint,
    a replacement joins, the node is drained and ended."""
    import ray

    if seconds <= 0:
        raise BadInput(f"chaos preempt --in: got {seconds:g}; give the seconds until the node goes, e.g. 30")
    conn = connect(node_fleet(fleet_name, node, "chaos preempt"))
    _known_node(conn, node)
    with ray_driver(conn.gcs_address):
        ray.get(_agent("preempt", node).preempt.remote(seconds), timeout=60)
    console.print(f"{node}: preemption notice sent; it goes in {seconds:g}s")
