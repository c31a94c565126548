"""The controller's watch over running jobs: hangs, and notices of nodes going away.

It reads what the workers publish in the GCS KV (beats, notice acknowledgements; see
jobs/worker/progress.py and jobs/worker/notices.py), decides with the pure functions of jobs/supervision/hang.py, and acts
through the health agents of the nodes involved: py-spy stacks of every rank, then SIGKILL of the
stuck rank, which makes Ray Train restart the job from its newest checkpoint.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Collection, Mapping

from rayfleet.cluster.rayio import gcs
from rayfleet.jobs.supervision import history
from rayfleet.jobs.supervision.hang import Beat, Hang, hung
from rayfleet.jobs.worker.notices import NOTICES_KEY
from rayfleet.jobs.client.spec import JobSpec

log = logging.getLogger("rayfleet.jobs")


def read_beats(client: Any) -> dict[str, dict[int, Beat]]:
    """job -> rank -> newest beat, for the newest submission seen of each job."""
    keys = [key for key in gcs.kv_keys(client, "job/") if "/beat/" in key]
    by_job: dict[str, dict[int, Beat]] = {}
    for key, raw in gcs.kv_multi_get(client, keys).items():
        beat = Beat.from_json(json.loads(raw))
        by_job.setdefault(key.split("/")[1], {})[beat.rank] = beat
    for job, beats in by_job.items():
        newest = max(beats.values(), key=lambda b: b.time).submission_id
        by_job[job] = {rank: b for rank, b in beats.items() if b.submission_id == newest}
    return by_job


def read_acks(client: Any) -> dict[str, dict[str, Any]]:
    keys = [key for key in gcs.kv_keys(client, "job/") if key.endswith("/notice-ack")]
    return {key.split("/")[1]: json.loads(raw) for key, raw in gcs.kv_multi_get(client, keys).items()}


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
        self.handled: dict[str, float] = {}  # job -> time of the stuck beat already acted on
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
            found = hung(ranks, now, spec.hang, spec.worker_range[0])
            if found is None or self.handled.get(job) == ranks[found.rank].time:
                continue
            if _finished(storage, job, submission):  # its last beats are old because it ended
                self.ended.add(submission)
                continue
            agent = agent_of(found.node_id)
            if agent is None or not _ray_get(agent.process_alive.remote(found.pid)):
                continue  # the worker is gone: Ray Train restarts it; a crash is no hang
            self.handled[job] = ranks[found.rank].time
            folder = respond(job, found, ranks, storage, agent_of, now)
            done.append((job, found, folder))
        return done


def respond(job: str, found: Hang, ranks: Mapping[int, Beat], storage: str, agent_of: Callable[[str], Any],
            now: float) -> Path:
    """Save every rank's stacks, record the hang, then SIGKILL the stuck rank."""
    folder = history.job_dir(storage, job) / "diagnostics" / f"hang-{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}"
    folder.mkdir(parents=True, exist_ok=True)
    for rank, beat in sorted(ranks.items()):
        agent = agent_of(beat.node_id)
        stacks = _ray_get(agent.dump_stacks.remote(beat.pid), timeout=60) if agent else "no agent on its node"
        (folder / f"rank{rank}-pid{beat.pid}.txt").write_text(stacks or "")
    (folder / "hang.json").write_text(json.dumps({"job": job, "rank": found.rank, "node_id": found.node_id,
                                                  "pid": found.pid, "step": found.step, "reason": found.reason,
                                                  "time": now}, indent=1))
    history.record(storage, job, "hang", submission_id=ranks[found.rank].submission_id, rank=found.rank,
                   node_id=found.node_id, step=found.step, reason=found.reason, diagnostics=str(folder))
    agent = agent_of(found.node_id)
    if agent is not None:
        _ray_get(agent.kill.remote(found.pid))
    log.warning("job %s hung: %s; stacks in %s; rank %d killed to restart from its checkpoint",
                job, found.reason, folder, found.rank)
    return folder


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
