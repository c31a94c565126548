"""The federation's mover: moves a job off a cell that can no longer run it, onto another cell,
resuming from the job's newest checkpoint.

Where it runs, and why: one small process per federation, `python -m rayfleet.cli.mover
FEDERATION_DIR`, started detached by `rayfleet up` of a spec of cells and stopped by `rayfleet
down` (before the cells go down, so nothing moves while they stop). Not inside a cell's controller:
the process that must act when a cell is lost cannot live in that cell, and putting it in every
surviving controller would need those controllers to agree on which of them moves a job (a
consensus across clusters that share no GCS). Its own process outlives any one cell, needs no
election, and on the local provider runs beside the cells' supervisors. One runs per federation:
it holds an exclusive lock on `fleets/<fleet>/mover.lock` (which names its pid) for its life, and a
second one exits at once. It exits on its own when `federation.json` is gone (`down`).

Stateless beyond what it rebuilds each round (sync, then decide, then act):
- sync: the federation's cells (`federation.json`), where each job was placed last
  (`placements.jsonl`), each job's history in the cells' shared storage (unfinished? its newest
  submission and the cell that owns it? when did rank 0 last log a step?) and each cell's status
  and head (cli/cells.py `views`);
- decide: cluster/decide/federation.py's `moves_due` (pure): a job whose cell lost its pool, or
  whose head stayed lost past the spec's `federation` wait, and whose old copy stopped stepping;
- act, holding the federation's placement lock from reading the cells' free nodes to recording the
  move (cluster/head/federation_record.py `placing`; `rayfleet submit` takes it too, so the two
  never count the same free nodes): submit the job's recorded spec to the chosen cell through today's submit path
  (jobs/client/submit.py; with the shared storage it resumes from the newest committed
  checkpoint), then append the move and its reason to `placements.jsonl`, which `explain`, `job`,
  `logs`, `stop` and `events` follow.

A job never runs twice:
- the mover does not move a job whose rank 0 logged a step in the last STEPPING_S seconds;
- every submission records the fleet that owns it, and a cell's controller resubmits only its own
  jobs (jobs/supervision/resubmit.py): once moved, the old cell, should it come back, never
  starts the job again;
- when the old cell answers again and Ray there still runs the old submission, the mover stops it.
Each round also writes every answering cell's Prometheus endpoints, labelled `federation` and
`cell`, to the federation's `prometheus_targets.json` (a `file_sd_configs` file).

A crash between the submission and its record is repaired on the next round: a job whose newest
submission already names the chosen cell is recorded, not submitted again (and Ray's job API
refuses a second running copy of a name on one cell anyway).
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger("rayfleet.mover")
MODULE = "rayfleet.cli.mover"  # run as `python -m MODULE FEDERATION_DIR`
LOCK = "mover.lock"
PERIOD_S = 2.0  # a round reads each cell's status document from its GCS: cheap, and well inside any wait


def start_mover(federation: Any) -> Any:
    """The federation's mover (an Owned process): the running one, else one started now."""
    from rayfleet.cluster.head.processes import spawn_detached

    running = mover_process(federation.path)
    if running is not None:
        return running
    owned = spawn_detached([sys.executable, "-m", MODULE, str(federation.path)],
                           federation.logs_dir / "mover.out")
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline and owned.alive() and mover_process(federation.path) is None:
        time.sleep(0.1)  # until it holds its lock: a `down` right after `up` then finds it
    return owned


def mover_process(federation_dir: Path) -> Any:
    """The running mover of this federation, if any: the pid its lock file names, while that
    process is a mover of this folder (a pid reused by something else is not it)."""
    import psutil

    from rayfleet.cluster.head.processes import Owned, process_of

    try:
        pid = int((federation_dir / LOCK).read_text().strip())
        process = psutil.Process(pid)
        owned = Owned(pid, process.create_time())
        cmdline = process.cmdline()
    except (FileNotFoundError, ValueError, psutil.Error):
        return None
    mine = len(cmdline) > 3 and cmdline[1:3] == ["-m", MODULE] and Path(cmdline[-1]).resolve() == federation_dir.resolve()
    return owned if mine and process_of(owned) is not None else None


def stop_mover(federation: Any) -> None:
    """Stop the federation's mover (only the process its lock names, after checking it is one)."""
    from rayfleet.cluster.head.processes import stop_tree

    owned = mover_process(federation.path)
    if owned is not None:
        stop_tree(owned, grace_s=10.0, include_descendants=False)


class Mover:
    """One federation's mover (see the module's docstring); `round` is one pass: the metrics'
    targets, then sync-decide-act on the moves."""

    def __init__(self, federation_dir: Path, clock: Callable[[], float] = time.time) -> None:
        from rayfleet.cluster.head.fleetdir import FleetDir

        self.fleet = FleetDir(federation_dir.name, home=federation_dir.parent.parent)
        self.clock = clock
        self.lost_seen: dict[str, float] = {}   # cell -> when this process first saw its head lost
        self.waiting: dict[str, str] = {}       # job -> why no cell takes it (logged when that changes)
        self.leaving: dict[str, str] = {}       # job -> why it leaves its cell (logged when it changes)
        self.retired: set[str] = set()          # old submissions found ended or stopped

    def run(self, stopping: Callable[[], bool]) -> None:
        from rayfleet.cluster.head.federation_record import read_federation

        while not stopping() and read_federation(self.fleet) is not None:
            try:
                self.round()
            except Exception:  # a cell answering badly this round says nothing of the next
                log.exception("round failed; trying again in %.0f s", PERIOD_S)
            time.sleep(PERIOD_S)
        log.info("mover of %s exits (%s)", self.fleet.name, "stopped" if stopping() else "the federation is down")

    def round(self) -> None:
        from rayfleet.cluster.head.federation_record import read_federation

        record = read_federation(self.fleet)
        if record is None:
            return
        try:
            self.publish_targets(record)
        except Exception:  # the metrics' addresses must never keep a job from moving
            log.exception("the cells' Prometheus targets were not refreshed this round")
        self.move(record)

    def publish_targets(self, record: Any) -> None:
        """Every answering cell's Prometheus endpoints, labelled with its cell, in the federation's
        `file_sd_configs` file (cluster/head/federation_record.py METRICS_TARGETS)."""
        from rayfleet.cluster.head.federation_record import metrics_targets_document, write_metrics_targets
        from rayfleet.cluster.rayio import gcs
        from rayfleet.cluster.rayio.connection import connect
        from rayfleet.errors import FleetNotRunning

        cells = []
        for cell in record.cells:
            try:
                endpoints = gcs.metrics_endpoints(connect(cell.fleet).client)
            except FleetNotRunning:
                continue  # a lost cell's endpoints leave the file: Prometheus stops scraping them
            cells.append((cell.name, [endpoint.target for endpoint in endpoints]))
        if write_metrics_targets(self.fleet, metrics_targets_document(record.fleet, cells)):
            log.info("Prometheus targets: %s", "; ".join(f"{name} {len(targets)}" for name, targets in cells))

    def move(self, record: Any) -> None:
        """Sync, decide and act on the moves due (see the module's docstring)."""
        from rayfleet.cli.cells import held_nodes, views
        from rayfleet.cluster.decide.federation import FederationPolicy, moves_due, note_lost
        from rayfleet.cluster.head.federation_record import placing
        from rayfleet.cluster.spec.fleet import load_fleet_spec

        placed, watched = self.watched(record)
        moved = [p for p in placed.values() if p.get("moved_from") and p["submission_id"] not in self.retired]
        if not watched and not moved:
            return
        spec = load_fleet_spec(self.fleet.spec_file).federation_policy
        policy = FederationPolicy(spec.head_lost_wait_s, spec.fault_tolerant_wait_s)
        cells, _ = views(record, held={})  # whether a job leaves does not depend on what others hold
        now = self.clock()
        cells, self.lost_seen = note_lost(cells, self.lost_seen, now)
        self.note_leaving(watched, cells, policy, now)
        if moves_due(watched, cells, policy, now):  # where it goes does: read that only when needed
            with placing(self.fleet):  # a `rayfleet submit` placing meanwhile would count the same free nodes
                cells, _ = views(record, held=held_nodes(record))
                cells, self.lost_seen = note_lost(cells, self.lost_seen, now)
                for move in moves_due(watched, cells, policy, now):
                    self.apply(record, move, placed[move.job], now)
        alive = {cell.name for cell in cells if cell.health.head_alive}
        for entry in moved:
            if entry["moved_from"]["cell"] in alive:
                self.retire(entry)

    def note_leaving(self, watched: list[Any], cells: Any, policy: Any, now: float) -> None:
        """Log, once per change, each job whose cell cannot run it, and what its move waits for."""
        from rayfleet.cluster.decide.federation import STEPPING_S, decide_move

        for job in watched:
            move = decide_move(job.ask, job.cell, cells, policy, now)
            if not move.leaves:
                self.leaving.pop(job.ask.name, None)
                continue
            stepping = job.last_step_at is not None and now - job.last_step_at < STEPPING_S
            note = move.why.split(" has been lost")[0] + ("; its old copy still logs steps" if stepping else "")
            if self.leaving.get(job.ask.name) != note:
                self.leaving[job.ask.name] = note
                log.warning("job %s leaves cell %s: %s", job.ask.name, job.cell, move.why + (
                    f"; it waits until its old copy stops stepping (last step {now - job.last_step_at:.0f} s ago)"
                    if stepping else ""))

    def watched(self, record: Any) -> tuple[dict[str, dict[str, Any]], list[Any]]:
        """The newest placement of every job, and the unfinished ones as the decisions see them."""
        from rayfleet.cluster.decide.federation import JobAsk, WatchedJob
        from rayfleet.cluster.head.federation_record import placements
        from rayfleet.jobs.client.submit import TERMINAL
        from rayfleet.jobs.supervision import history, resubmit

        placed = {p["job"]: p for p in placements(self.fleet) if p.get("cell")}
        watched = []
        for job, entry in placed.items():
            storage = cell_storage(entry["cell_fleet"])
            if storage is None:
                continue
            summary = history.summary(storage, job)
            if summary.get("state") in TERMINAL or not summary.get("submission_id"):
                continue
            ask = JobAsk(job, entry["pool"], entry["nodes"])  # the gang's nodes, as placed
            watched.append(WatchedJob(ask, entry["cell"],
                                      resubmit.last_step_at(storage, job, summary["submission_id"])))
        return placed, watched

    def apply(self, record: Any, move: Any, placed: dict[str, Any], now: float) -> None:
        """Submit the job on the chosen cell and record the move; a move with no cell waits."""
        from rayfleet.cluster.decide.federation import placement_json
        from rayfleet.cluster.head.federation_record import PLACEMENTS, record_placement
        from rayfleet.cluster.rayio.connection import connect
        from rayfleet.jobs.client.spec import JobSpec
        from rayfleet.errors import BadInput
        from rayfleet.jobs.client.submit import TERMINAL, job_client, rayfleet_jobs, storage_of, submit
        from rayfleet.jobs.supervision import history

        placement = move.placement
        if placement is None or placement.cell is None:
            reasons = "; ".join(f"{r.cell}: {r.why}" for r in (placement.reasons if placement else ()))
            if self.waiting.get(move.job) != reasons:  # logged when the cells' reasons change
                log.warning("job %s waits: %s; no cell can take it now (%s)", move.job, move.why, reasons)
                self.waiting[move.job] = reasons
            return
        self.waiting.pop(move.job, None)
        cell = record.cell(placement.cell)
        storage = cell_storage(placed["cell_fleet"])
        events = history.events(storage, move.job)
        newest = next(e for e in reversed(events) if e["event"] == "submitted")
        if newest.get("fleet") == cell.fleet:
            submission_id = newest["submission_id"]  # submitted before a crash cut this round short
            old = next((e for e in reversed(events) if e["event"] == "submitted" and e.get("fleet") != cell.fleet),
                       newest)
        else:
            spec = JobSpec.model_validate(newest["spec"])
            conn = connect(cell.fleet)
            try:
                submission_id = submit(conn, spec, f"{self.fleet.path / PLACEMENTS} (job {move.job})")
            except BadInput:  # it already runs there: submitted before a crash, not yet in its history
                running = [j for j in rayfleet_jobs(job_client(conn), storage_of(conn))
                           if j["job"] == move.job and j["status"] not in TERMINAL]
                if not running:
                    raise
                submission_id = running[0]["submission_id"]
            old = newest
        entry = {**placement_json(placement), "cell_fleet": cell.fleet, "pool": placed["pool"],
                 "submission_id": submission_id, "at": now, "why": move.why,
                 "moved_from": {"cell": move.cell, "cell_fleet": placed["cell_fleet"],
                                "submission_id": old["submission_id"]}}
        record_placement(self.fleet, entry)
        log.warning("job %s moved from cell %s to cell %s as %s: %s", move.job, move.cell, cell.name,
                    submission_id, move.why)

    def retire(self, entry: dict[str, Any]) -> None:
        """A moved job's old copy on a cell that answers again: stopped if Ray there still runs it."""
        from rayfleet.cluster.rayio.connection import connect
        from rayfleet.errors import FleetNotRunning
        from rayfleet.jobs.client.submit import TERMINAL, job_client, landed

        old = entry["moved_from"]
        try:
            client = job_client(connect(old["cell_fleet"]))
            if landed(client, old["submission_id"]):
                status = str(client.get_job_status(old["submission_id"]).value)
                if status not in TERMINAL:
                    client.stop_job(old["submission_id"])
                    log.warning("job %s: stopped its old copy %s on cell %s, which answers again (it moved to "
                                "cell %s)", entry["job"], old["submission_id"], old["cell"], entry["cell"])
        except FleetNotRunning:
            return
        self.retired.add(entry["submission_id"])


def cell_storage(cell_fleet: str) -> str | None:
    """A cell's job storage, as its `up` recorded it (the cells of a federation share one)."""
    import json

    from rayfleet.cluster.head.fleetdir import FleetDir

    try:
        runtime = json.loads((FleetDir(cell_fleet).path / "runtime.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return runtime.get("storage") or str(FleetDir(cell_fleet).storage_dir)


def main() -> None:
    from rayfleet.cluster.head.supervisor import ALREADY_RUNNING, hold_lock

    federation_dir = Path(sys.argv[1]).resolve()
    os.environ["RAYFLEET_HOME"] = str(federation_dir.parent.parent)  # the cells are its siblings
    (federation_dir / "logs").mkdir(parents=True, exist_ok=True)
    logging.basicConfig(filename=federation_dir / "logs" / "mover.log", level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s")
    lock = hold_lock(federation_dir, LOCK)
    if lock is None:
        log.error("another mover (pid %s) runs for %s; this one exits",
                  (federation_dir / LOCK).read_text().strip(), federation_dir)
        sys.exit(ALREADY_RUNNING)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    log.info("mover of %s starts (pid lock %s)", federation_dir.name, federation_dir / LOCK)
    Mover(federation_dir).run(lambda: bool(stop))


if __name__ == "__main__":
    main()
