"""Warm standby workers and the hold for a notice: the keeper's bookkeeping, which processes count as
standbys, when the held ranks stop, and the trainer without Ray Data's per-restart actor."""
from __future__ import annotations

import json
import time
from typing import Any

import pytest

from rayfleet.jobs.contract import WORKER_SETUP_HOOK_ENV
from rayfleet.jobs.worker import notices
from rayfleet.jobs.driver import warm
from rayfleet.jobs.driver.warm import PENDING_S, STALE_S, Asks, PoolNode, plan, standing, training


def node(node_id: str, slots: int = 1) -> PoolNode:
    return PoolNode(node_id, f"10.0.0.{len(node_id)}:1234", slots)


def entry(submission: str, at: float) -> bytes:
    return json.dumps({"submission_id": submission, "time": at}).encode()


def test_each_node_gets_its_slots_less_the_standbys_it_has_and_those_coming() -> None:
    nodes = [node("a", 2), node("b", 2), node("c", 1)]
    assert plan(nodes, {"a": 2, "b": 1}, {}) == {"b": 1, "c": 1}
    assert plan(nodes, {"a": 2, "b": 1}, {"b": 1, "c": 1}) == {}
    assert plan(nodes, {"a": 3}, {}) == {"b": 2, "c": 1}  # a surplus on one node covers no other


def test_standbys_of_this_submission_count_until_their_heartbeat_goes_stale() -> None:
    now = 1000.0
    entries = {"job/j/warm/n1/11": entry("s2", now - 1), "job/j/warm/n1/12": entry("s2", now - STALE_S - 1),
               "job/j/warm/n2/13": entry("s1", now), "job/j/warm/n2/14": entry("s2", now),
               "job/j/warm/n3/15": b"not json"}
    assert standing(entries, "s2", now) == {"n1": {"job/j/warm/n1/11"}, "n2": {"job/j/warm/n2/14"}}


def test_an_ask_counts_as_coming_until_its_standbys_come_up_even_once_an_actor_took_them() -> None:
    asks = Asks()
    asks.ask("n1", 2, now=0.0, present={"old"})
    assert asks.coming({"n1": {"old"}}, now=1.0) == {"n1": 2}          # the standby there before is no answer
    assert asks.coming({"n1": {"old", "new1"}}, now=2.0) == {"n1": 1}
    assert asks.coming({"n1": set()}, now=3.0) == {"n1": 1}            # new1 was taken by an actor: still arrived
    assert asks.coming({"n1": {"new2"}}, now=4.0) == {"n1": 0}
    asks.ask("n2", 1, now=5.0, present=())
    assert asks.coming({}, now=4.0 + PENDING_S) == {"n2": 1}          # n1's ask is over
    assert asks.coming({}, now=5.0 + PENDING_S) == {}                 # n2's never answered: asked again


def test_standbys_wait_for_the_restarted_attempt_to_train() -> None:
    published = {"submission_id": "s", "time": 100.0}
    assert not training(published, None)
    assert not training(published, {"submission_id": "s", "time": 99.0})   # a beat of the attempt before
    assert not training(published, {"submission_id": "t", "time": 101.0})
    assert training(published, {"submission_id": "s", "time": 101.0})


def test_the_training_workers_run_the_preload_hook() -> None:
    assert warm.worker_runtime_env() == {"env_vars": {WORKER_SETUP_HOOK_ENV: "rayfleet.jobs.worker.preload.preload"}}
    import ray._private.ray_constants as ray_constants
    from ray._common.utils import load_class

    from rayfleet.jobs.worker.preload import preload

    assert WORKER_SETUP_HOOK_ENV == ray_constants.WORKER_PROCESS_SETUP_HOOK_ENV_VAR
    assert load_class(warm.worker_runtime_env()["env_vars"][WORKER_SETUP_HOOK_ENV]) is preload  # as Ray loads it


def test_the_trainer_starts_no_ray_data_actor_for_a_job_without_datasets() -> None:
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks import DatasetsCallback

    from rayfleet.jobs.driver.entrypoint import trainer_class

    def kinds(trainer: Any) -> set[type]:
        return {type(c) for c in trainer._create_default_callbacks()}

    ours = trainer_class()(lambda config: None, scaling_config=ScalingConfig(num_workers=1))
    plain = TorchTrainer(lambda config: None, scaling_config=ScalingConfig(num_workers=1))
    assert DatasetsCallback in kinds(plain) and DatasetsCallback not in kinds(ours)
    assert kinds(plain) - kinds(ours) == {DatasetsCallback}


class Notices:
    """The notices document as the controller publishes it, changing over time."""

    def __init__(self, docs: list[dict[str, float]], alive: set[str]) -> None:
        self.docs, self.alive, self.reads = docs, alive, 0

    def read(self) -> dict[str, float]:
        self.reads += 1
        return self.docs[min(self.reads - 1, len(self.docs) - 1)]


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> Any:
    def install(docs: list[dict[str, float]], alive: set[str]) -> Notices:
        doc = Notices(docs, alive)
        monkeypatch.setattr(notices, "read_notices", doc.read)
        monkeypatch.setattr(notices, "node_alive", lambda node_id: node_id in doc.alive)
        return doc
    return install


def test_held_ranks_stop_as_soon_as_the_noticed_node_is_ended(published: Any) -> None:
    deadline = time.time() + 30
    published([{"n1": deadline}, {"n1": deadline}, {}], alive=set())
    started = time.time()
    with pytest.raises(notices.NodeEnded, match="ended for its notice"):
        notices.hold(deadline, every_s=0.01)
    assert time.time() - started < 5  # not the notice's 30 s


def test_a_withdrawn_notice_ends_the_hold_and_training_goes_on(published: Any) -> None:
    deadline = time.time() + 30
    doc = published([{"n1": deadline, "n2": deadline + 100}, {"n2": deadline + 100}], alive={"n1", "n2"})
    notices.hold(deadline, every_s=0.01)  # returns: n1 is alive and no longer noticed
    assert doc.reads == 2


def test_without_news_the_hold_lasts_until_the_deadline(published: Any) -> None:
    deadline = time.time() + 0.3
    published([{"n1": deadline}], alive={"n1"})
    notices.hold(deadline, every_s=0.01)
    assert time.time() >= deadline
