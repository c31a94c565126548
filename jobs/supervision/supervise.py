"""The controller's watch over running jobs: hangs, and notices of nodes going away.

It reads what the workers publish in the GCS KV (beats, notice acknowledgements; see
jobs/worker/progress.py and jobs/worker/notices.py), decides with the pure functions of
jobs/supervision/hang.py (is it stalled?) and attribution.py (which rank is the cause?), and acts
through the health agents of the nodes involved: each rank's process state, step counters and
py-spy stack, then SIGKILL of the culprit, which makes Ray Train restart the job from its newest
checkpoint.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Collection, Mapping

from rayfleet.cluster.rayio import gcs
from rayfleet.jobs.supervision import history
from rayfleet.jobs.supervision.attribution import RankEvidence, attribute
from rayfleet.jobs.supervision.hang import Beat, Hang, Stall, stalled
from rayfleet.jobs.client.spec import JobSpec
from rayfleet.names import JOB_KEYS_PREFIX, NOTICES_KEY, is_beat_key, is_notice_ack_key, job_of_key

log = logging.getLogger("rayfleet.jobs")


def read_beats(client: Any) -> dict[str, dict[int, Beat]]:
    """job -> rank -> newest beat, for the newest submission seen of each job."""
    keys = [key for key in gcs.kv_keys(client, JOB_KEYS_PREFIX) if is_beat_key(key)]
    by_job: dict[str, dict[int, Beat]] = {}
    for key, raw in gcs.kv_multi_get(client, keys).items():
        beat = Beat.from_json(json.loads(raw))
        by_job.setdefault(job_of_key(key), {})[beat.rank] = beat
    for job, beats in by_job.items():
        newest = max(beats.values(), key=lambda b: b.time).submission_id
        by_job[job] = {rank: b for rank, b in beats.items() if b.submission_id == newest}
    return by_job


def read_acks(client: Any) -> dict[str, dict[str, Any]]:
    keys = [key for key in gcs.kv_keys(client, JOB_KEYS_PREFIX) if is_notice_ack_key(key)]
    return {job_of_key(key): json.loads(raw) for key, raw in gcs.kv_multi_get(client, keys).items()}


def submission_of(ranks: Mapping[int, Beat]) -> str:
    """The submission id of one job's beats (read_beats keeps only its newest submission's)."""
    return next(iter(ranks.values())).submission_id


def publish_notices(client: Any, notices: Mapping[str, float]) -> None:
    gcs.kv_put(client, NOTICES_KEY, json.dumps(dict(notices), sort_keys=True))


def running(beats: Mapping[str, Mapping[int, Beat]], storage: str | None) -> dict[str, Mapping[int, Beat]]:
    """The beats of jobs whose newest submission has not finished. A finished job's last beats stay
    in the KV and still name the nodes it ran on; it will never acknowledge a notice."""
    if not storage:
        return dict(beats)
    return {job: ranks for job, ranks in beats.items()
            if not _finished(storage, job, submission_of(ranks))}


def acknowledged(notices: Mapping[str, float], beats: Mapping[str, Mapping[int, Beat]],
                 acks: Mapping[str, Mapping[str, Any]]) -> frozenset[str]:
    """Noticed nodes all of whose jobs have checkpointed for the notice (a node running none
    counts as acknowledged: nothing on it needs saving)."""
    out = set()
    for node_id, deadline in notices.items():
        jobs = [job for job, ranks in beats.items() if any(b.node_id == node_id for b in ranks.values())]
        if all(acks.get(job, {}).get("deadline", 0) >= deadline - 1 and
               acks[job].get("submission_id") == submission_of(beats[job]) for job in jobs):
            out.add(node_id)
    return frozenset(out)


def holding(beats: Mapping[str, Mapping[int, Beat]], acks: Mapping[str, Mapping[str, Any]],
            now: float) -> frozenset[str]:
    """Jobs whose newest submission checkpointed for a notice and holds until its deadline: they stop
    stepping on purpose, waiting for the controller to end the noticed node, so they are not hung."""
    return frozenset(job for job, ranks in beats.items()
                     if acks.get(job, {}).get("submission_id") == submission_of(ranks)
                     and float(acks[job].get("deadline", 0)) > now)


def jobs_on(beats: Mapping[str, Mapping[int, Beat]], nodes: Mapping[str, str | None]) -> list[tuple[str, str, str]]:
    """(job, instance, submission id) for each job with a rank on one of `nodes` (instance -> Ray node id)."""
    out = []
    for job, ranks in beats.items():
        for instance, node_id in nodes.items():
            hit = next((b for b in ranks.values() if node_id and b.node_id == node_id), None)
            if hit is not None:
                out.append((job, instance, hit.submission_id))
    return out


class HangWatch:
    """Finds hung jobs and responds, once per hang."""

    def __init__(self) -> None:
        self.handled: dict[str, float] = {}  # job -> time of the newest beat of the stall already acted on
        self.specs: dict[str, JobSpec | None] = {}  # submission id -> its spec (read once: it never changes)
        self.ended: set[str] = set()  # submissions whose history says they finished

    def check(self, beats: Mapping[str, Mapping[int, Beat]], storage: str, agent_of: Callable[[str], Any],
              now: float, held: Collection[str] = ()) -> list[tuple[str, Hang, Path]]:
        """Hangs found and handled in this pass: (job, hang, diagnostics folder). Runs every loop:
        the job's history (one line per step) is read only for a new submission or a hang found.
        Jobs in `held` hold for a notice (see `holding`) and are left alone until its deadline."""
        done = []
        for job, ranks in beats.items():
            if job in held:
                continue
            submission = submission_of(ranks)
            if submission not in self.specs:
                self.specs[submission] = _spec(storage, job)
            spec = self.specs[submission]
            if spec is None or submission in self.ended:
                continue
            stall = stalled(ranks, now, spec.hang, spec.worker_range[0])
            if stall is None or self.handled.get(job) == stall.since:
                continue
            if _finished(storage, job, submission):  # its last beats are old because it ended
                self.ended.add(submission)
                continue
            inspected = {rank: _ray_get(agent.inspect.remote(beat.pid)) if (agent := agent_of(beat.node_id)) else None
                         for rank, beat in ranks.items()}
            if any((seen or {}).get("state") in ("gone", "zombie") for seen in inspected.values()):
                continue  # a worker is gone: Ray Train restarts the group; a crash is no hang
            self.handled[job] = stall.since
            found, folder = respond(job, stall, ranks, inspected, storage, agent_of, now)
            done.append((job, found, folder))
        return done


def evidence_of(ranks: Mapping[int, Beat], inspected: Mapping[int, Mapping[str, Any] | None],
                stacks: Mapping[int, str | None]) -> dict[int, RankEvidence]:
    out = {}
    for rank, beat in ranks.items():
        seen = inspected.get(rank) or {}
        marks = seen.get("marks") or {}
        out[rank] = RankEvidence(rank=rank, pid=beat.pid, node_id=beat.node_id, state=seen.get("state"),
                                 started=marks.get("started"), finished=marks.get("finished"), stack=stacks.get(rank),
                                 collectives=seen.get("collectives"))
    return out


def respond(job: str, stall: Stall, ranks: Mapping[int, Beat], inspected: Mapping[int, Mapping[str, Any] | None],
            storage: str, agent_of: Callable[[str], Any], now: float) -> tuple[Hang, Path]:
    """Save every rank's stacks, decide who caused the hang (attribution.py), record it, then
    SIGKILL the culprits; when the evidence does not decide, every candidate is killed to unblock
    the job, and the record says that none of them is known to be at fault."""
    folder = history.job_dir(storage, job) / "diagnostics" / f"hang-{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}"
    folder.mkdir(parents=True, exist_ok=True)
    stacks: dict[int, str | None] = {}
    for rank, beat in sorted(ranks.items()):
        agent = agent_of(beat.node_id)
        stacks[rank] = _ray_get(agent.dump_stacks.remote(beat.pid), timeout=60) if agent else None
        (folder / f"rank{rank}-pid{beat.pid}.txt").write_text(stacks[rank] or "no agent on its node")
    found = Hang(stall, attribute(evidence_of(ranks, inspected, stacks)), ranks)
    killed = list(found.attribution.candidates)
    collateral = [r for r in killed if r not in found.attribution.culprits]
    record = {"job": job, "rank": found.rank, "culprits": list(found.attribution.culprits),
              "candidates": list(found.attribution.candidates), "decided_by": found.attribution.decided_by,
              "node_id": ranks[found.rank].node_id if found.rank is not None else None,
              "pid": ranks[found.rank].pid if found.rank is not None else None,
              "killed": killed, "collateral": collateral, "step": stall.step, "reason": found.reason, "time": now,
              "evidence": found.attribution.to_json()["findings"]}
    (folder / "hang.json").write_text(json.dumps(record, indent=1))
    history.record(storage, job, "hang", submission_id=submission_of(ranks), rank=found.rank,
                   culprits=record["culprits"], candidates=record["candidates"], collateral=collateral,
                   decided_by=found.attribution.decided_by, node_id=record["node_id"], step=stall.step,
                   reason=found.reason, diagnostics=str(folder))
    for rank in killed:
        agent = agent_of(ranks[rank].node_id)
        if agent is not None:
            _ray_get(agent.kill.remote(ranks[rank].pid))
    log.warning("job %s hung: %s; stacks in %s; killed rank(s) %s to restart from its checkpoint",
                job, found.reason, folder, killed)
    return found, folder


def _spec(storage: str, job: str) -> JobSpec | None:
    submitted = [e for e in history.events(storage, job) if e["event"] == "submitted"]
    return JobSpec.model_validate(submitted[-1]["spec"]) if submitted and submitted[-1].get("spec") else None


def _finished(storage: str, job: str, submission_id: str) -> bool:
    return any(e["event"] == "finished" and e.get("submission_id") == submission_id
               for e in history.events(storage, job))


def _ray_get(ref: Any, timeout: float = 10.0) -> Any:
    import ray

    try:
        return ray.get(ref, timeout=timeout)
    except Exception as error:
        log.info("agent call failed: %s", error)
        return None
