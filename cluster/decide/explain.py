"""Answers to `rayfleet explain POOL|JOB|NODE`, pure: built only from what the controller recorded.

The planner writes its reasons as it decides: the status document (each pool's floor, autoscale
target and reason, pending bundles, launch failures and where each pending gang could run, from
`autoscale.pending_report`), node records (state, reason), the health document (every check with
its value and threshold) and events (each decision with its reason). This module reads those and
never re-decides: an answer cannot disagree with what the controller did.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from rayfleet.cluster.decide.autoscale import show_resources
from rayfleet.cluster.decide.retries import backoff_s

Answer = dict[str, Any]   # {"subject", "kind", "answer": [lines], "evidence": {...}}


def explain_pool(name: str, status: Mapping[str, Any], events: Sequence[Mapping[str, Any]], now: float) -> Answer:
    pool = next(p for p in status["pools"] if p["name"] == name)
    lines = [f"pool {name}: {pool['ready']} ready of {pool['desired']} desired (min {pool['min']}, max {pool['max']}, "
             f"floor {pool['floor']}); {pool['starting']} starting, {pool['quarantined']} quarantined"]
    base = len(lines) + 1  # the first line, and what sizes the pool
    if not pool.get("autoscale"):
        lines.append("autoscaling is off for this pool: it holds its floor (the spec's `nodes`, or `rayfleet scale`)")
    else:
        lines.append(f"the autoscaler: {pool.get('autoscale_reason') or 'no decision yet'}")
    if pool["desired"] >= pool["max"] and (pool.get("pending_bundles") or pool.get("autoscale_target") or 0) \
            and (pool.get("autoscale_target") or 0) >= pool["max"]:
        lines.append(f"not growing: at max_nodes={pool['max']} (raise `max_nodes` in the fleet spec to grow it)")
    failures = (status.get("pool_failures") or {}).get(name)
    if failures and failures.get("count"):
        wait = backoff_s(failures["count"])
        retry = failures["last"] + wait - now
        last_error = next((e["message"] for e in reversed(events) if e.get("pool") == name and e["kind"] == "failed"),
                          "")
        lines.append(f"not growing: {failures['count']} launch failure(s) in a row; backing off {wait:g}s, next "
                     f"try {'now' if retry <= 0 else f'in {retry:.0f}s'}" + (f" (last: {last_error})" if last_error else ""))
    unfit = [g for g in status.get("pending", []) if g.get("pools", {}).get(name) not in (None, "fits")
             and g.get("home") is None]
    for gang in unfit:
        lines.append(f"pending work fits no pool: {gang['bundles']} bundle(s) of {', '.join(gang['shapes'])}"
                     f"{' for ' + ', '.join(gang['selectors']) if gang['selectors'] else ''}: here, "
                     f"{gang['pools'][name]}")
    if pool.get("unplaced_bundles"):
        lines.append(f"{pool['unplaced_bundles']} pending bundle(s) homed here would not fit even at max_nodes")
    if len(lines) <= base:
        lines.append("nothing holds it back: it has what it was asked for")
    recent = [e for e in events if e.get("pool") == name][-5:]
    return {"subject": name, "kind": "pool", "answer": lines,
            "evidence": {"pool": pool, "failures": failures, "recent_events": list(recent)}}


def explain_job(name: str, job: Mapping[str, Any], status: Mapping[str, Any], worker: Mapping[str, float],
                events: Sequence[Mapping[str, Any]]) -> Answer:
    """`job`: its history summary (+ "steps_done"); `worker`: one worker's resources as the job asks."""
    state, pool_name = job.get("state"), job.get("pool")
    lines = [f"job {name}: {state}, pool {pool_name}, {job.get('workers')} worker(s) of {show_resources(worker)}"]
    pool = next((p for p in status["pools"] if p["name"] == pool_name), None)
    if state in ("SUCCEEDED", "FAILED", "STOPPED"):
        lines.append(f"ended {state}" + (f": {job['error']}" if job.get("error") else ""))
    elif job.get("steps_done"):
        lines.append(f"running: at step {job['steps_done']} of {job.get('steps')}")
    else:
        mine = [g for g in status.get("pending", []) if _is_jobs(g, pool_name, worker)]
        if not mine:
            lines.append("no pending bundles of this shape: its workers are placed or the driver is still "
                         "starting; `rayfleet logs " + name + "` shows the driver")
        for gang in mine:
            fits = [p for p, why in gang["pools"].items() if why == "fits"]
            lines.append(f"pending: {gang['bundles']} bundle(s) of {', '.join(gang['shapes'])} (gang {gang['gang'][:12]},"
                         f" {gang['strategy'] or 'tasks'}) cannot be placed yet")
            for p, why in gang["pools"].items():
                if why != "fits":
                    lines.append(f"  pool {p}: {why}")
            if fits:
                lines.append(f"  could run on: {', '.join(fits)}")
        if pool is not None:
            lines.append(f"pool {pool_name}: {pool['ready']} ready of {pool['desired']} desired, max {pool['max']}; "
                         + (pool.get("autoscale_reason") or "autoscaling off: `rayfleet scale` or the spec sizes it"))
    return {"subject": name, "kind": "job", "answer": lines,
            "evidence": {"job": dict(job), "pool": pool, "recent_events": list(events)[-5:]}}


def explain_node(instance: str, node: Mapping[str, Any] | None, health: Mapping[str, Any] | None,
                 events: Sequence[Mapping[str, Any]]) -> Answer:
    mine = [e for e in events if e.get("instance") == instance]
    lines = []
    if node is not None:
        lines.append(f"node {instance} ({node['pool']}): {node['state']}"
                     + (f", admitted" if node.get("admitted") else "") + (", hot spare" if node.get("spare") else "")
                     + (f": {node['reason']}" if node.get("reason") else ""))
    else:
        lines.append(f"node {instance}: no longer in the fleet")
    decisive = [e for e in mine if e["kind"] in DECISIONS]
    for event in decisive:
        lines.append(f"{event['kind']}: {event['message']}" + (f" (reason: {event['reason']})" if event.get("reason") else ""))
    failing = [c for c in (health or {}).get("checks", []) if c.get("status") not in (None, "ok")]
    for check in failing:
        lines.append(f"check {check.get('name')}: {check.get('status')}: {check.get('message', '')}{_threshold(check)}")
    if len(lines) == 1:
        lines.append("no decision recorded about it: it was launched and joined as asked")
    return {"subject": instance, "kind": "node", "answer": lines,
            "evidence": {"node": node, "checks": (health or {}).get("checks", []), "events": mine}}


DECISIONS = frozenset({"lost", "suspect", "unhealthy", "degraded", "drain", "quarantine", "replace", "held",
                       "release", "release-refused", "terminate", "notice", "failed", "scale", "recovered",
                       "promote", "admitted", "hang"})


def _threshold(check: Mapping[str, Any]) -> str:
    value, limit = check.get("value"), check.get("threshold")
    if value is None and limit is None:
        return ""
    return f" (value {value}, threshold {limit})"


def _is_jobs(gang: Mapping[str, Any], pool: str | None, worker: Mapping[str, float]) -> bool:
    """A pending gang is this job's when its bundle is the job's worker shape and it asks for the
    job's pool (Ray Train puts one bundle per worker, with the pool's label selector)."""
    return any(_cpus_gpus(r) == _cpus_gpus(worker) for r in gang.get("resources", [])) and \
        (not gang.get("selectors") or any(pool and pool in s for s in gang["selectors"]))


def _cpus_gpus(resources: Mapping[str, float]) -> tuple[float, float]:
    return float(resources.get("CPU") or 0), float(resources.get("GPU") or 0)


def match(subject: str, pools: Iterable[str], jobs: Iterable[str], nodes: Iterable[str]) -> list[str]:
    """Which kinds `subject` names (pool, job, node): more than one is ambiguous."""
    return [kind for kind, names in (("pool", pools), ("job", jobs), ("node", nodes)) if subject in set(names)]
