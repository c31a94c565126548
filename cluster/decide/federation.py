"""The federation's decisions: which cell a job runs on, and when a job must leave its cell.

A fleet of cells (cluster/spec/cells.py) is several Ray clusters; a training gang never spans
two of them, so each job is placed whole on one cell. The federation keeps no state of its own
beyond what it can rebuild from the cells: each decision takes the cells' views (pools, free
capacity, head health) and returns the choice with a reason for every cell, which is what
`rayfleet explain JOB` shows (why this cell, why not the others). Pure: no I/O, no clock (`now`
is an argument).

Placement, in order: a cell whose head is lost, or that lacks the job's pool, or whose pool
cannot hold the gang even at its max_nodes, is refused. Among the rest, a cell where the gang
fits on free nodes now comes before one whose pool must grow first; then the most free nodes of
the job's pool (it spreads jobs, leaving every cell room to take a lost cell's jobs); then health
(a head with fault tolerance survives its own loss without pausing the job); then the name, so
the same views always give the same cell.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from enum import Enum
from typing import Any, Mapping, Sequence

from rayfleet.cluster.decide.events import Event


@dataclass(frozen=True, slots=True)
class CellHealth:
    """The cell's head as the federation last saw it."""

    head_alive: bool = True
    fault_tolerance: bool = False      # GCS fault tolerance: a lost head restarts with its state
    lost_since: float | None = None    # when its head was first seen lost (None while alive)


@dataclass(frozen=True, slots=True)
class PoolCapacity:
    """One pool of one cell: nodes a gang can start on now, and how far the pool may grow."""

    free_nodes: int       # ready, admitted and idle
    nodes: int            # nodes it has or is launching (what counts against max_nodes)
    max_nodes: int
    gpus_per_node: int = 0

    @property
    def room_to_grow(self) -> int:
        return max(0, self.max_nodes - self.nodes)


@dataclass(frozen=True, slots=True)
class CellView:
    name: str
    pools: Mapping[str, PoolCapacity]
    health: CellHealth = CellHealth()


@dataclass(frozen=True, slots=True)
class JobAsk:
    """A job as placement sees it: a gang of `workers` on `pool`, `workers_per_node` to a node
    (what the job's GPUs and CPUs allow on one node of the pool; jobs/client/spec.py computes it)."""

    name: str
    pool: str
    workers: int
    workers_per_node: int = 1

    @property
    def nodes(self) -> int:
        return math.ceil(self.workers / max(1, self.workers_per_node))


class Verdict(str, Enum):
    CHOSEN = "chosen"
    PASSED_OVER = "passed over"   # could run it; another cell ranked first
    REFUSED = "refused"           # cannot run it now


@dataclass(frozen=True, slots=True)
class CellReason:
    cell: str
    verdict: Verdict
    why: str


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a job goes (`cell` None: no cell can take it now; it waits) and why, cell by cell."""

    job: str
    cell: str | None
    nodes: int                  # whole nodes the gang takes
    grow_by: int = 0            # nodes the chosen pool must launch first (0: it starts on free nodes)
    reasons: tuple[CellReason, ...] = ()


@dataclass(frozen=True, slots=True)
class FederationPolicy:
    # A judgement: a head that a supervisor restarts (cluster/head) is back within seconds; one
    # not back in a minute is taken to be gone, and its jobs cost less restarted from their
    # checkpoint elsewhere than waiting on it.
    head_lost_wait_s: float = 60.0
    # With fault tolerance, the raylets wait for the restarted head up to the spec's
    # head.fault_tolerance.reconnect_timeout_s (120 s by default); past it they exit and the
    # cell's jobs are lost anyway. Twice that, then move.
    fault_tolerant_wait_s: float = 240.0


@dataclass(frozen=True, slots=True)
class Move:
    """Whether a job leaves its cell, why, and (when it does) where it goes."""

    job: str
    cell: str
    leaves: bool
    why: str
    placement: Placement | None = None


def place(job: JobAsk, cells: Sequence[CellView]) -> Placement:
    """The cell a job runs on, with the reason each cell was chosen, passed over or refused."""
    refused: list[CellReason] = []
    able: list[tuple[tuple[object, ...], CellView, str]] = []
    for cell in cells:
        problem = _refusal(job, cell)
        if problem:
            refused.append(CellReason(cell.name, Verdict.REFUSED, problem))
            continue
        pool = cell.pools[job.pool]
        fits_now = pool.free_nodes >= job.nodes
        rank = (not fits_now, -pool.free_nodes, not cell.health.fault_tolerance, cell.name)
        able.append((rank, cell, _describe(job, pool, cell.health)))
    if not able:
        return Placement(job.name, None, job.nodes, reasons=tuple(refused))
    able.sort(key=lambda item: item[0])
    (best_rank, best, best_why), others = able[0], able[1:]
    pool = best.pools[job.pool]
    grow_by = max(0, job.nodes - pool.free_nodes)
    reasons = [CellReason(best.name, Verdict.CHOSEN, best_why + _first_because(best_rank, others))]
    reasons += [CellReason(cell.name, Verdict.PASSED_OVER, why + "; " + _behind(rank, best_rank, best.name))
                for rank, cell, why in others]
    return Placement(job.name, best.name, job.nodes, grow_by, tuple(reasons + refused))


def place_all(jobs: Sequence[JobAsk], cells: Sequence[CellView]) -> tuple[list[Placement], tuple[CellView, ...]]:
    """Place jobs one after another, each seeing the capacity the ones before it took."""
    placements, current = [], tuple(cells)
    for job in jobs:
        placement = place(job, current)
        placements.append(placement)
        current = reserve(current, job.pool, placement)
    return placements, current


def reserve(cells: Sequence[CellView], pool: str, placement: Placement) -> tuple[CellView, ...]:
    """The views after a placement took its nodes (free ones first, then launched ones)."""
    out = []
    for cell in cells:
        if cell.name == placement.cell:
            capacity = cell.pools[pool]
            taken = min(capacity.free_nodes, placement.nodes)
            changed = dataclasses.replace(capacity, free_nodes=capacity.free_nodes - taken,
                                          nodes=capacity.nodes + placement.grow_by)
            cell = dataclasses.replace(cell, pools={**cell.pools, pool: changed})
        out.append(cell)
    return tuple(out)


def decide_move(job: JobAsk, current: str, cells: Sequence[CellView], policy: FederationPolicy,
                now: float) -> Move:
    """Whether a job's cell can still run it; if not, where it goes instead (another cell only)."""
    cell = next((c for c in cells if c.name == current), None)
    why = _cannot_run(job, current, cell, policy, now)
    if why is None:
        return Move(job.name, current, False, f"cell {current} can run it")
    others = [c for c in cells if c.name != current]
    return Move(job.name, current, True, why, place(job, others))


STEPPING_S = 15.0
"""A job whose rank 0 logged a step this recently is alive wherever it runs, and is never moved: its
old workers may train on for a while after their head is lost (until their raylet gives up on the
GCS), and two copies of one job must never train at once. The same window as the controller's own
resubmission of a lost driver (jobs/supervision/resubmit.py)."""


@dataclass(frozen=True, slots=True)
class WatchedJob:
    """An unfinished job of the federation: where its newest placement put it, and when its rank 0
    last logged a step (None: never, or not known)."""

    ask: JobAsk
    cell: str
    last_step_at: float | None = None


def moves_due(jobs: Sequence[WatchedJob], cells: Sequence[CellView], policy: FederationPolicy,
              now: float) -> list[Move]:
    """The moves to make now, in the jobs' order: each job whose cell cannot run it and whose old
    copy has stopped stepping, placed on the capacity the moves before it left. A move whose
    placement has no cell waits (its reasons say why each cell refused)."""
    moves, current = [], tuple(cells)
    for job in jobs:
        move = decide_move(job.ask, job.cell, current, policy, now)
        if not move.leaves:
            continue
        if job.last_step_at is not None and now - job.last_step_at < STEPPING_S:
            continue  # its old workers still train; moving now would run it twice
        moves.append(move)
        if move.placement is not None and move.placement.cell is not None:
            current = reserve(current, job.ask.pool, move.placement)
    return moves


def note_lost(cells: Sequence[CellView], seen: Mapping[str, float], now: float
              ) -> tuple[tuple[CellView, ...], dict[str, float]]:
    """The views with a lost head's `lost_since` filled in from when the watcher first saw it lost
    (`seen`: cell -> that time), for a head whose supervisor recorded no time (gone with it, or a
    head rayfleet did not start); and the new `seen`, which forgets cells that answer again. A
    watcher that restarts starts these clocks again: it waits longer, never less."""
    out, lost = [], {}
    for cell in cells:
        if not cell.health.head_alive:
            lost[cell.name] = seen.get(cell.name, now)
            if cell.health.lost_since is None:
                cell = dataclasses.replace(cell, health=dataclasses.replace(cell.health, lost_since=lost[cell.name]))
        out.append(cell)
    return tuple(out), lost


def _cannot_run(job: JobAsk, current: str, cell: CellView | None, policy: FederationPolicy,
                now: float) -> str | None:
    if cell is None:
        return f"cell {current} is no longer in the fleet"
    health = cell.health
    if health.head_alive:  # only a head that answers says which pools its cell has
        return f"cell {current} no longer has pool {job.pool}" if job.pool not in cell.pools else None
    since = now if health.lost_since is None else health.lost_since
    wait = policy.fault_tolerant_wait_s if health.fault_tolerance else policy.head_lost_wait_s
    if now - since < wait:
        return None  # it may come back: a move restarts the job from its checkpoint
    tolerance = "with" if health.fault_tolerance else "without"
    return (f"cell {current}'s head ({tolerance} fault tolerance) has been lost for {now - since:.0f} s, "
            f"over the {wait:.0f} s the policy waits")


def _refusal(job: JobAsk, cell: CellView) -> str:
    health = cell.health
    if not health.head_alive:
        since = "" if health.lost_since is None else f" since t={health.lost_since:.0f}"
        return f"head lost{since}"
    if job.pool not in cell.pools:
        return f"no pool {job.pool}"
    pool = cell.pools[job.pool]
    if pool.free_nodes + pool.room_to_grow < job.nodes:
        return (f"pool {job.pool} has {pool.free_nodes} free nodes and room to grow by {pool.room_to_grow}; "
                f"the job needs {job.nodes}")
    return ""


def _describe(job: JobAsk, pool: PoolCapacity, health: CellHealth) -> str:
    gpus = f" ({job.nodes * pool.gpus_per_node} GPUs)" if pool.gpus_per_node else ""
    start = ("fits on free nodes now" if pool.free_nodes >= job.nodes
             else f"must launch {job.nodes - pool.free_nodes} nodes first")
    tolerance = "with" if health.fault_tolerance else "without"
    return (f"pool {job.pool}: {pool.free_nodes} free nodes for {job.nodes}{gpus}, {start}; "
            f"head alive, {tolerance} fault tolerance")


def _first_because(rank: tuple[object, ...], others: list[tuple[tuple[object, ...], CellView, str]]) -> str:
    if not others:
        return "; the only cell that can run it"
    return "; " + _rule(rank, others[0][0], "ranks first: ")


def _behind(rank: tuple[object, ...], best: tuple[object, ...], best_name: str) -> str:
    return _rule(best, rank, f"{best_name} ranks first: ")


def _rule(first: tuple[object, ...], second: tuple[object, ...], prefix: str) -> str:
    """Which rule put `first` ahead of `second` (the first element of the rank that differs)."""
    rules = ("it fits on free nodes now", "more free nodes", "head fault tolerance", "name order (a tie)")
    index = next((i for i, (a, b) in enumerate(zip(first, second)) if a != b), len(rules) - 1)
    return prefix + rules[index]


def cell_view(name: str, status: Mapping[str, Any] | None, head: Mapping[str, Any] | None,
              busy: Mapping[str, int]) -> CellView:
    """A cell as placement sees it, from its controller's status document (`rayfleet status -o
    json`; None when its head does not answer), its supervisor's head state (None for a head
    rayfleet did not start) and the nodes its unfinished jobs hold, per pool (`busy`).

    A pool's free nodes are its ready, non-spare nodes less those held: a job just submitted holds
    its nodes before its workers reach them, so counting jobs rather than Ray's idle resources
    keeps two submissions in a row from landing on the same node."""
    fault_tolerance = bool(head and head.get("fault_tolerant"))
    if status is None or (head is not None and not head.get("alive", True)):
        lost = head.get("lost_at") if head else None
        return CellView(name, {}, CellHealth(False, fault_tolerance, lost))
    pools = {}
    for pool in status["pools"]:
        ready = sum(1 for n in status["nodes"]
                    if n["pool"] == pool["name"] and n["state"] == "ready" and not n["spare"])
        pools[pool["name"]] = PoolCapacity(free_nodes=max(0, ready - busy.get(pool["name"], 0)),
                                           nodes=max(pool["desired"], ready), max_nodes=pool["max"],
                                           gpus_per_node=pool.get("gpus_per_node") or 0)
    return CellView(name, pools, CellHealth(True, fault_tolerance))


def placement_json(placement: Placement) -> dict[str, Any]:
    """A placement as the federation's folder keeps it and `rayfleet explain` reads it."""
    return {"job": placement.job, "cell": placement.cell, "nodes": placement.nodes, "grow_by": placement.grow_by,
            "reasons": [{"cell": r.cell, "verdict": r.verdict.value, "why": r.why} for r in placement.reasons]}


def placement_event(entry: Mapping[str, Any]) -> Event:
    """A placement or a move, as read back from the federation's folder, as `rayfleet events`
    lists it: a move's reason is the cell it left and why; a placement's, why its cell ranked first."""
    chosen = next((r["why"] for r in entry.get("reasons", ()) if r["verdict"] == Verdict.CHOSEN.value), "")
    moved = entry.get("moved_from")
    if moved:
        return Event(entry["at"], "move", f"job {entry['job']} moved from cell {moved['cell']} to cell "
                     f"{entry['cell']} as {entry['submission_id']}, resuming from its newest checkpoint",
                     pool=entry.get("pool"), reason=entry.get("why", ""))
    return Event(entry["at"], "place", f"job {entry['job']} placed on cell {entry['cell']} as "
                 f"{entry['submission_id']}", pool=entry.get("pool"), reason=chosen)
