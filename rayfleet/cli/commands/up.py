"""`rayfleet up -f FLEET.yaml`: start (or re-apply) a fleet and wait until its pools are ready."""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

import typer
import yaml

from rayfleet.cluster.rayio import gcs
from rayfleet.cli.app import app
from rayfleet.cli.mover import start_mover
from rayfleet.cli.output import console
from rayfleet.cli.progress import wait_for_pools
from rayfleet.cluster.rayio.connection import ray_driver, use_token
from rayfleet.cluster.loop.controller import start_controller
from rayfleet.jobs.supervision.step import JobSupervision
from rayfleet.errors import BadInput, Failed
from rayfleet.cluster.head.fleetdir import FleetDir, set_current_fleet
from rayfleet.cluster.head.head import SUPERVISOR_GONE, adopt_head, running_head, start_head, use_external_head
from rayfleet.cluster.head.local_capacity import check_local_capacity
from rayfleet.cluster.head.processes import write_json_atomic
from rayfleet.cluster.providers import make_provider
from rayfleet.cluster.head.federation_record import CellRecord, FederationRecord, read_federation, write_federation
from rayfleet.cluster.spec.cells import Cell, fleet_cells, require_one_cell
from rayfleet.cluster.spec.fleet import FleetSpec, load_fleet_spec
from rayfleet.cluster.loop.store import FleetStore
from rayfleet.cluster.head.supervisor import head_in_progress, supervisor_process

CONTROLLER_STEPS = (JobSupervision,)
"""What the controller runs each pass beside reconciling the fleet (cluster/loop/steps.py)."""


@app.command()
def up(
    file: Path = typer.Option(..., "-f", "--file", help="fleet spec (YAML)"),
    wait: bool = typer.Option(True, help="wait until every pool is ready"),
    timeout: float = typer.Option(600.0, help="seconds to wait for the pools"),
) -> None:
    """Start the fleet's head and controller, or re-apply the spec to a running fleet.

    Running it again is harmless: a running head and controller are reused, and a pool keeps a
    manual `rayfleet scale` target unless the spec's own `nodes` for it changed. A spec of cells
    starts each cell as a fleet of its own, `<fleet>-<cell>`, under the federation `<fleet>`.
    """
    spec = load_fleet_spec(file)
    cells = fleet_cells(spec)
    if len(cells) > 1:
        up_cells(spec, cells, file, wait, timeout)
        return
    store, head = up_fleet(spec, file)
    if wait:
        started = time.monotonic()
        wait_for_pools(store, spec.name, timeout)
        console.print(f"fleet {spec.name} ready in {time.monotonic() - started:.1f}s; "
                      f"`rayfleet status` shows it, the Ray dashboard is at {head.dashboard_url}")


def up_cells(spec: FleetSpec, cells: tuple[Cell, ...], file: Path, wait: bool, timeout: float) -> None:
    """The federation's record naming the cells, then each cell up as a fleet of its own (today's
    `up`, one after another); the current fleet is the federation. Repeating it adopts the cells
    already up, and after a crash halfway `down` finds every cell the record names."""
    from rayfleet.cluster.providers import require_sdk

    for cell in cells:
        require_sdk(cell.spec, str(file))
    starting = [cell for cell in cells if FleetDir(cell.spec.name).read_head() is None]
    if spec.capabilities.nodes_on_this_machine and starting:
        nodes = sum(pool.desired + pool.hot_spares for cell in starting for pool in cell.spec.pools)
        # each further head takes HEAD_BYTES, 3.5 nodes' NODE_BYTES: counted as 4 (cluster/head/local_capacity.py)
        check_local_capacity(nodes + 4 * (len(starting) - 1),
                             f"{file}: pools[*].nodes + hot_spares, and a head per cell")
    federation = FleetDir(spec.name)
    if federation.read_head() is not None:
        raise BadInput(f"{file}: cells: fleet {spec.name} runs as one Ray cluster; `rayfleet down --fleet {spec.name}` "
                       "first, then `up` starts it as cells")
    cells = shared_storage(spec, cells, federation)
    with federation.lock():
        record = FederationRecord(spec.name, tuple(CellRecord(c.name, c.spec.name) for c in cells))
        write_federation(federation, record)  # first: a crash halfway leaves what `down` must stop
        if Path(file).resolve() != federation.spec_file.resolve():
            shutil.copyfile(file, federation.spec_file)
        started = []
        for cell in cells:
            console.print(f"[bold]cell {cell.name}[/] (fleet {cell.spec.name})")
            text = yaml.safe_dump(cell.spec.model_dump(mode="json"), sort_keys=False)
            started.append(up_fleet(cell.spec, file, spec_text=text, current=False))
        set_current_fleet(spec.name)
        mover = start_mover(federation)
        console.print(f"federation mover running (pid {mover.pid}): it moves a lost cell's jobs after "
                      f"{spec.federation_policy.head_lost_wait_s:.0f} s ({spec.federation_policy.fault_tolerant_wait_s:.0f} s "
                      "with head fault tolerance)")
    if wait:
        begun = time.monotonic()
        for cell, (store, _) in zip(cells, started):
            use_token(FleetDir(cell.spec.name).token_file)  # a process's Ray token is one at a time
            wait_for_pools(store, cell.spec.name, max(1.0, timeout - (time.monotonic() - begun)))
        console.print(f"fleet {spec.name} ready in {time.monotonic() - begun:.1f}s: {len(cells)} cells "
                      f"({', '.join(c.spec.name for c in cells)}); `rayfleet status` shows them")


def shared_storage(spec: FleetSpec, cells: tuple[Cell, ...], federation: FleetDir) -> tuple[Cell, ...]:
    """The cells with one checkpoint storage: the spec's `storage`, else on a provider whose nodes
    run on this machine the federation's own folder (`fleets/<fleet>/storage`), so a job moved to
    another cell resumes from its newest checkpoint. Elsewhere a spec without `storage` leaves each
    cell its own, and a moved job starts again from step 0."""
    shared = spec.storage or (str(federation.storage_dir) if spec.capabilities.nodes_on_this_machine else None)
    if shared is None:
        return cells
    return tuple(dataclasses.replace(cell, spec=cell.spec.model_copy(update={"storage": shared})) for cell in cells)


def up_fleet(spec: FleetSpec, file: Path, spec_text: str | None = None,
             current: bool = True) -> tuple[FleetStore, Any]:
    """Start (or adopt) one fleet's head and controller and apply its spec: today's `up` of one
    cluster. `spec_text`: the spec to keep in the fleet's folder when it is not `file` (a cell's)."""
    if spec_text is None:
        require_one_cell(spec, file, "up")
    from rayfleet.cluster.providers import require_sdk

    require_sdk(spec, str(file))  # before anything starts
    if spec.capabilities.platform_head and spec.head.address is None:
        raise BadInput(f"{file}: head.address: a kubernetes fleet's head is KubeRay's; give its host:port "
                       f"(the manifests of `rayfleet render k8s -f {file}` run `up` inside the head pod)")
    fleet = FleetDir(spec.name)
    if read_federation(fleet) is not None:
        raise BadInput(f"{file}: fleet {spec.name} runs as cells; `rayfleet down --fleet {spec.name}` first, "
                       "then `up` starts it as one Ray cluster")
    with fleet.lock():
        head, adopted = running_head(fleet), False
        if head is None and spec.head.address is None and head_in_progress(fleet.path):
            # an earlier `up` was stopped while its head started, or fault tolerance is restarting it
            with console.status("waiting for the head this fleet's supervisor is starting"):
                head, adopted = adopt_head(fleet), True
            console.print(f"head up at {head.gcs_address}, dashboard {head.dashboard_url}")
        if head is None and spec.head.address is not None:
            head = use_external_head(spec, fleet)
            console.print(f"using the Ray head at {head.gcs_address}")
        elif head is None:
            refuse_orphans(fleet)
            if spec.capabilities.nodes_on_this_machine and spec_text is None:
                nodes = sum(pool.desired + pool.hot_spares for pool in spec.pools)
                check_local_capacity(nodes, f"{file}: pools[*].nodes + hot_spares")
            with console.status("starting the Ray head"):
                head = start_head(spec, fleet)
            console.print(f"head up at {head.gcs_address}, dashboard {head.dashboard_url}")
        elif not adopted:
            console.print(f"fleet {spec.name} is already up at {head.gcs_address}: applying the spec")
            if head.owned is not None and supervisor_process(fleet.path) is None:
                console.print(f"[yellow]{SUPERVISOR_GONE}[/]")
        if spec_text is not None:
            write_text_atomic(fleet.spec_file, spec_text)
        elif Path(file).resolve() != fleet.spec_file.resolve():
            shutil.copyfile(file, fleet.spec_file)
        use_token(fleet.token_file)
        store = FleetStore(gcs.client(head.gcs_address))
        apply_spec(store, spec)
        runtime = {"fleet_dir": str(fleet.path), "gcs_address": head.gcs_address,
                   "dashboard_url": head.dashboard_url, "token_path": str(fleet.token_file),
                   "temp_root": str(fleet.temp_root), "storage": spec.storage or str(fleet.storage_dir)}
        store.put_runtime(runtime)
        write_json_atomic(fleet.path / "runtime.json", runtime)
        with console.status("starting the controller"), ray_driver(head.gcs_address):
            start_controller(head.gcs_address, steps=CONTROLLER_STEPS)
        if current:
            set_current_fleet(spec.name)
    return store, head


def write_text_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    temporary.replace(path)


def apply_spec(store: FleetStore, spec: FleetSpec) -> None:
    """Store the spec; a pool whose declared `nodes` changed drops its manual target."""
    old = store.spec()
    targets = store.targets()
    if old is not None and targets:
        old_nodes = {pool.name: pool.nodes for pool in old.pools}
        kept = {name: count for name, count in targets.items()
                if name in spec.pool_names and old_nodes.get(name) == spec.pool(name).nodes}
        if kept != targets:
            store.put_targets(kept)
    store.put_spec(spec)


def refuse_orphans(fleet: FleetDir) -> None:
    """A fleet whose head was lost without fault tolerance still has nodes that point at the dead
    cluster: starting a new head beside them would leave them stranded. Say what to do instead."""
    runtime = fleet.path / "runtime.json"
    if not (runtime.exists() and fleet.spec_file.exists()):
        return
    provider = make_provider(load_fleet_spec(fleet.spec_file), json.loads(runtime.read_text()))
    running = [i.id for i in provider.instances() if i.status.value == "running"]
    if running:
        raise Failed(f"fleet {fleet.name} lost its head (fault tolerance is off, so its cluster state is gone) "
                     f"but {len(running)} of its nodes still run; `rayfleet down` stops them, then `rayfleet up`")
