"""Who hangs a job, decided from each rank's evidence (jobs/supervision/attribution.py): the
process state, the exact step counters and the stack each name the rank that stopped, and when
they disagree or say nothing, the record names candidates instead of guessing."""
from __future__ import annotations

from rayfleet.jobs.supervision.attribution import RankEvidence, attribute

# py-spy dumps of a 2-rank DDP job (taken from real processes, trimmed): rank 0 waits in the
# gradient all-reduce of its backward; rank 1 was stopped in the sleep after its step.
IN_BACKWARD = '''Process 28726: python -m worker
Python v3.11.7 (/usr/bin/python3.11)

Thread 28726 (idle): "MainThread"
    _engine_run_backward (torch/autograd/graph.py:979)
    backward (torch/autograd/__init__.py:395)
    Tensor.backward (torch/_tensor.py:623)
    train_step (rayfleet/jobs/worker/loop.py:230)
    train (rayfleet/jobs/worker/loop.py:160)

Thread 28790 (idle): "rayfleet-standby"
    _heartbeat (rayfleet/jobs/worker/standby.py:52)
'''
IN_ALL_REDUCE = '''Thread 30001 (idle): "MainThread"
    all_reduce (torch/distributed/distributed_c10d.py:2950)
    wrapper (torch/distributed/c10d_logger.py:81)
    notice_deadline (rayfleet/jobs/worker/loop.py:197)
    train (rayfleet/jobs/worker/loop.py:168)
'''
AFTER_STEP = '''Thread 28727 (idle): "MainThread"
    train (rayfleet/jobs/worker/loop.py:162)
    train_worker (rayfleet/jobs/worker/loop.py:96)
'''
BUSY = '''Thread 30002 (active): "MainThread"
    spin (user_model.py:12)
    forward (user_model.py:40)
    train_step (rayfleet/jobs/worker/loop.py:225)
'''


# The same case as Ray Train runs it (from a real hang on a local fleet, trimmed): the process's
# main thread serves Ray's worker loop; the training loop runs in Ray Train's "TrainingThread".
# Rank 0 waits for gradients in backward; rank 1 was stopped in its forward.
RAY_TRAIN_RANK0 = '''Process 18534: ray::RayTrainWorker
Thread 18534 (idle): "MainThread"
    Worker.main_loop (ray/_private/worker.py:1069)
    <module> (ray/_private/workers/default_worker.py:323)
Thread 18769 (idle): "MonitoringThread(train_fn_with_final_checkpoint_flush)"
    ThreadRunner._monitor_target (ray/train/v2/_internal/execution/worker_group/thread_runner.py:72)
    Thread.run (threading.py:982)
Thread 18770 (idle): "TrainingThread(train_fn_with_final_checkpoint_flush)"
    _engine_run_backward (torch/autograd/graph.py:979)
    backward (torch/autograd/__init__.py:395)
    Trainer.train_step (jobs/worker/loop.py:230)
    Trainer.train (jobs/worker/loop.py:160)
    train_worker (jobs/worker/loop.py:96)
'''
RAY_TRAIN_RANK1 = '''Process 18533: ray::RayTrainWorker
Thread 18533 (idle): "MainThread"
    Worker.main_loop (ray/_private/worker.py:1069)
    <module> (ray/_private/workers/default_worker.py:323)
Thread 18773 (idle): "TrainingThread(train_fn_with_final_checkpoint_flush)"
    Linear.forward (torch/nn/modules/linear.py:134)
    Attention.forward (model/attention.py:123)
    DistributedDataParallel.forward (torch/nn/parallel/distributed.py:1890)
    Trainer.train_step (jobs/worker/loop.py:228)
    Trainer.train (jobs/worker/loop.py:160)
    train_worker (jobs/worker/loop.py:96)
'''


def rank(r: int, **seen) -> RankEvidence:  # type: ignore[no-untyped-def]
    return RankEvidence(rank=r, pid=100 + r, node_id=f"n{r}", **seen)


def test_a_rank_stopped_right_after_its_step_is_named_by_all_three_kinds_of_evidence() -> None:
    """The case that fooled the oldest-beat rule: rank 1 finished step 10 and was stopped; rank 0
    started step 11 and waits for it (its beat may well be the older of the two)."""
    found = attribute({0: rank(0, state="sleeping", started=11, finished=10, stack=IN_BACKWARD),
                       1: rank(1, state="stopped", started=10, finished=10, stack=AFTER_STEP)})
    assert found.culprits == (1,) and found.decided_by == "process"
    assert [f.culprits for f in found.findings] == [(1,), (1,), (1,), None]  # collectives: not read
    assert "rank 1 is the cause (process and steps and stack)" == found.summary()


def test_a_rank_stuck_in_a_busy_loop_is_named_by_its_stack() -> None:
    """Nothing is wrong with its process and it is on the same step: only its stack is outside
    the collective the other waits in."""
    found = attribute({0: rank(0, state="sleeping", started=5, finished=4, stack=IN_ALL_REDUCE),
                       1: rank(1, state="running", started=5, finished=4, stack=BUSY)})
    assert found.culprits == (1,) and found.decided_by == "stack"
    assert found.findings[2].saw[1] == "outside any collective, at spin (user_model.py:12)"


def test_a_rank_stopped_inside_the_collective_is_named_by_its_process_state_alone() -> None:
    found = attribute({0: rank(0, state="sleeping", started=7, finished=6, stack=IN_ALL_REDUCE),
                       1: rank(1, state="stopped", started=7, finished=6, stack=IN_ALL_REDUCE)})
    assert found.culprits == (1,) and [f.culprits for f in found.findings] == [(1,), None, None, None]


def waits(seq: int, op: str = "gloo:all_reduce") -> dict:  # type: ignore[type-arg]
    """A rank's flight recorder answer: its newest collective, #seq, still in flight."""
    return {"answered": True, "entries": [{"pg": "0", "seq": seq - 1, "op": op, "state": "scheduled", "retired": True},
                                          {"pg": "0", "seq": seq, "op": op, "state": "scheduled", "retired": False}]}


def done(seq: int) -> dict:  # type: ignore[type-arg]
    return {"answered": True, "entries": [{"pg": "0", "seq": seq, "op": "gloo:all_reduce", "state": "scheduled",
                                           "retired": True}]}


def test_a_rank_stopped_inside_the_collective_is_named_by_its_flight_recorder_silence_too() -> None:
    """Both ranks are inside collective #42 by their stacks and step counters alike; the stopped
    one cannot answer for its collectives while the other says it waits in #42."""
    found = attribute({0: rank(0, state="sleeping", started=7, finished=6, stack=IN_ALL_REDUCE, collectives=waits(42)),
                       1: rank(1, state="stopped", started=7, finished=6, stack=IN_ALL_REDUCE,
                               collectives={"answered": False})})
    assert found.culprits == (1,) and [f.culprits for f in found.findings] == [(1,), None, None, (1,)]
    assert found.findings[3].saw == {0: "waits in gloo:all_reduce #42", 1: "did not answer"}


def test_a_rank_that_never_entered_the_awaited_collective_is_named_by_the_flight_recorder() -> None:
    """Three ranks: two wait in #17; rank 2's newest collective is #16, done: it never entered #17
    (a Python sleep in its step: its process and counters look like everyone's)."""
    found = attribute({0: rank(0, state="sleeping", started=5, finished=4, collectives=waits(17)),
                       1: rank(1, state="sleeping", started=5, finished=4, collectives=waits(17)),
                       2: rank(2, state="sleeping", started=5, finished=4, collectives=done(16))})
    assert found.culprits == (2,) and found.decided_by == "collectives"
    assert found.findings[3].saw[2] == "newest gloo:all_reduce #16, done"


def test_ranks_waiting_in_different_collectives_are_not_blamed_for_it() -> None:
    """Seen in bench/hang_attribution.py (3 ranks, rank 2 stopped before its step's collectives):
    gloo's broadcast let rank 1 go on to the all-reduce #33 while the root, rank 0, still waited
    in the broadcast #32. Rank 0 is behind rank 1 but waits: only the silent rank is named."""
    found = attribute({0: rank(0, collectives=waits(32, "gloo:broadcast")), 1: rank(1, collectives=waits(33)),
                       2: rank(2, collectives={"answered": False})})
    assert found.culprits == (2,) and found.decided_by == "collectives"


def test_the_flight_recorder_decides_nothing_when_no_rank_waits_or_one_is_unread() -> None:
    idle = attribute({0: rank(0, collectives=done(3)), 1: rank(1, collectives=done(3))})
    assert idle.findings[3].culprits is None and idle.culprits == ()
    unread = attribute({0: rank(0, collectives=waits(3)), 1: rank(1)})
    assert unread.findings[3].culprits is None and unread.findings[3].saw[1] == "not read"


def test_a_rank_behind_the_others_on_three_ranks() -> None:
    found = attribute({0: rank(0, state="sleeping", started=9, finished=8, stack=IN_BACKWARD),
                       1: rank(1, state="disk-sleep", started=8, finished=8, stack=AFTER_STEP),
                       2: rank(2, state="sleeping", started=9, finished=8, stack=IN_BACKWARD)})
    assert found.culprits == (1,)


def test_disagreeing_evidence_names_candidates_and_no_culprit() -> None:
    found = attribute({0: rank(0, state="stopped", started=5, finished=5, stack=IN_ALL_REDUCE),
                       1: rank(1, state="sleeping", started=5, finished=5, stack=BUSY)})
    assert found.culprits == () and found.candidates == (0, 1) and found.decided_by is None
    assert "the evidence disagrees: process names [0]; stack names [1]" in found.summary()


def test_missing_evidence_decides_nothing_and_every_rank_is_a_candidate() -> None:
    """No agent answered and no counters were found: nothing is known, so no rank is blamed."""
    found = attribute({0: rank(0), 1: rank(1), 2: rank(2)})
    assert found.culprits == () and found.candidates == (0, 1, 2)
    assert found.summary() == "cause undecided between ranks 0, 1, 2 (no evidence names a rank)"
    # every rank in the same state is no evidence either (a whole node paused, say)
    same = attribute({0: rank(0, state="stopped", stack=IN_ALL_REDUCE), 1: rank(1, state="stopped", stack=IN_ALL_REDUCE)})
    assert same.culprits == () and same.candidates == (0, 1)


def test_the_record_says_what_each_kind_of_evidence_saw() -> None:
    found = attribute({0: rank(0, state="sleeping", started=11, finished=10, stack=IN_BACKWARD),
                       1: rank(1, state="stopped", started=10, finished=10, stack=None)})
    record = found.to_json()
    assert record["culprits"] == [1] and record["decided_by"] == "process"
    by_kind = {f["kind"]: f for f in record["findings"]}
    assert by_kind["steps"]["saw"] == {"0": "started 11, finished 10", "1": "started 10, finished 10"}
    assert by_kind["stack"] == {"kind": "stack", "culprits": None, "saw": {"0": "in a collective", "1": "no stack"}}


def test_ddps_buffer_broadcast_named_with_its_class_counts_as_a_collective() -> None:
    """py-spy 0.4 names methods with their class: DDP's broadcast of buffers at the start of every
    forward is a collective (seen in bench/hang_attribution.py: a healthy rank waiting there was
    read as "outside any collective", and the stack decided nothing)."""
    in_broadcast = '''Thread 1 (idle): "MainThread"
    DistributedDataParallel._distributed_broadcast_coalesced (torch/nn/parallel/distributed.py:2363)
    DistributedDataParallel._sync_buffers (torch/nn/parallel/distributed.py:2296)
    DistributedDataParallel._pre_forward (torch/nn/parallel/distributed.py:1623)
    Trainer.train_step (rayfleet/jobs/worker/loop.py:229)
'''
    assert rank(0, stack=in_broadcast).in_collective is True
    found = attribute({0: rank(0, state="sleeping", stack=in_broadcast), 1: rank(1, state="sleeping", stack=BUSY)})
    assert found.culprits == (1,) and found.decided_by == "stack"


def test_ray_trains_checkpoint_barrier_counts_as_waiting_for_peers() -> None:
    """At a checkpoint, Ray Train's report waits for every rank (its synchronization actor)."""
    in_report = '''Thread 1 (idle): "MainThread"
    _sync_checkpoint_dir_name_across_ranks (ray/train/v2/_internal/execution/context.py:254)
    report (ray/train/v2/_internal/execution/context.py:474)
    train (rayfleet/jobs/worker/loop.py:185)
'''
    assert rank(0, stack=in_report).in_collective and not rank(1, stack=AFTER_STEP).in_collective


def test_waiting_for_the_notice_all_reduce_counts_as_waiting_for_peers() -> None:
    """The ranks agree on notices by an all-reduce started a step earlier; its wait is a collective's."""
    in_notice = '''Thread 1 (idle): "MainThread"
    wait (rayfleet/jobs/worker/notices.py:131)
    poll (rayfleet/jobs/worker/notices.py:110)
    train (rayfleet/jobs/worker/loop.py:182)
'''
    assert rank(0, stack=in_notice).in_collective and not rank(1, stack=AFTER_STEP).in_collective


def test_in_a_ray_train_worker_the_training_thread_is_read_not_the_main_thread() -> None:
    """Both ranks are inside step 129, so their counters cannot tell; their training threads can."""
    found = attribute({0: rank(0, state="sleeping", started=129, finished=128, stack=RAY_TRAIN_RANK0),
                       1: rank(1, state="sleeping", started=129, finished=128, stack=RAY_TRAIN_RANK1)})
    assert found.culprits == (1,) and found.decided_by == "stack"
    assert found.findings[2].saw == {0: "in a collective", 1: "outside any collective, at Linear.forward (linear.py:134)"}
