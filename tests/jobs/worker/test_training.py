"""The worker loop on real gloo process groups (no Ray): strategies agree with one process,
resumed runs continue the same curve, checkpoints move between strategies and world sizes."""
from __future__ import annotations

import json
import math
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from rayfleet.jobs.contract import RunInfo
from rayfleet.jobs.worker import checkpoint
from rayfleet.jobs.worker.loop import METRICS, Trainer, lr_at
from rayfleet.jobs.client.spec import JobSpec
from tests.support.checkpoints import rewrite_in_legacy_layout, trainer
from tests.support.distributed import on_ranks


def job(strategy: str = "ddp", workers: int = 1, ep: int = 1, preset: str = "tiny", steps: int = 6,
        every: int = 3, keep: int = 5, **extra: object) -> JobSpec:
    return JobSpec.model_validate({
        "name": "t", "pool": "p", "workers": workers, "steps": steps,
        "parallelism": {"strategy": strategy, "expert_parallel": ep}, "model": {"preset": preset},
        "data": {"seq_len": 32, "global_batch": 4}, "checkpoint": {"every": every, "keep": keep},
        "optimizer": {"warmup_steps": 2}, **extra})


def train(rank: int, world: int, spec: JobSpec, storage: str, submission: str = "s1") -> list[tuple[int, float]]:
    run = RunInfo(storage=storage, device="cpu", gpus_per_worker=0, submission_id=submission)
    trainer = Trainer(spec, run, rank, world, torch.device("cpu"),
                      Path(storage) / "jobs" / spec.name)
    return trainer.train()


def losses(pairs: list[tuple[int, float]]) -> list[float]:
    return [loss for _, loss in pairs]


@pytest.mark.parametrize("strategy,preset,ep", [("ddp", "tiny", 1), ("fsdp", "tiny", 1), ("moe", "tiny_moe", 2)])
def test_two_ranks_equal_one_process_with_the_same_global_batch(tmp_path: Path, strategy: str, preset: str,
                                                                ep: int) -> None:
    single = on_ranks(1, train, job("moe" if strategy == "moe" else "ddp", 1, 1, preset), str(tmp_path / "a"))
    double = on_ranks(2, train, job(strategy, 2, ep, preset), str(tmp_path / "b"))
    assert torch.allclose(torch.tensor(losses(single)), torch.tensor(losses(double)), atol=1e-4), (single, double)
    assert losses(single)[-1] < losses(single)[0]


def test_resumed_run_continues_the_uninterrupted_loss_curve(tmp_path: Path) -> None:
    storage = tmp_path / "s"
    straight = on_ranks(2, train, job(steps=8, every=4, workers=2), str(storage), "s1")
    job_dir = storage / "jobs" / "t"
    newest = checkpoint.latest_checkpoint(job_dir)
    assert newest is not None and newest.name.endswith("00000008")
    shutil.rmtree(newest)  # as if the run had died between step 4's checkpoint and step 8
    resumed = on_ranks(2, train, job(steps=8, every=4, workers=2), str(storage), "s2")  # a new submission
    assert [step for step, _ in resumed] == [5, 6, 7, 8]
    assert torch.allclose(torch.tensor(losses(resumed)), torch.tensor(losses(straight)[4:]), atol=1e-5)
    history = [json.loads(line) for line in (job_dir / "history.jsonl").read_text().splitlines()]
    assert [e["from_step"] for e in history if e["event"] == "started"] == [0, 4]


@pytest.mark.parametrize("strategy,preset,ep", [("fsdp", "tiny", 1), ("moe", "tiny_moe", 2)])
def test_checkpoints_of_sharded_runs_resume_in_one_process(tmp_path: Path, strategy: str, preset: str, ep: int) -> None:
    """A checkpoint is unsharded: an FSDP or expert-parallel run resumes on a different world size."""
    straight = on_ranks(1, train, job("moe" if ep > 1 else "ddp", 1, 1, preset, steps=6, every=3), str(tmp_path / "a"))
    storage = str(tmp_path / "b")
    on_ranks(2, train, job(strategy, 2, ep, preset, steps=3, every=3), storage, "s1")
    resumed = on_ranks(1, train, job("moe" if ep > 1 else "ddp", 1, 1, preset, steps=6, every=3), storage, "s2")
    assert torch.allclose(torch.tensor(losses(resumed)), torch.tensor(losses(straight)[3:]), atol=1e-4)


def test_a_checkpoint_with_separate_expert_w1_w3_resumes_the_same_curve(tmp_path: Path) -> None:
    """A MoE job checkpointed (in the unsharded layout) before the experts stacked w1|w3 into one
    parameter resumes after the upgrade: weights and Adam moments carry over, so the loss curve is the uninterrupted one."""
    straight = on_ranks(1, train, job("moe", preset="tiny_moe", steps=6, every=3), str(tmp_path / "a"))
    storage = tmp_path / "b"
    on_ranks(1, train, job("moe", preset="tiny_moe", steps=3, every=3), str(storage), "s1")
    saved = checkpoint.latest_checkpoint(storage / "jobs" / "t")
    assert saved is not None
    rewrite_in_legacy_layout(saved, job("moe", preset="tiny_moe", steps=3, every=3), storage)
    model_state = torch.load(saved / "model.pt", weights_only=True)
    optim_state = torch.load(saved / "optim.pt", weights_only=False)
    stacked = [key for key in model_state if key.endswith(".experts.w13")]
    assert stacked
    for key in stacked:  # rewrite the checkpoint in the layout of before
        old = key[:-3]
        model_state[old + "w1"], model_state[old + "w3"] = model_state.pop(key).chunk(2, dim=1)
        moments = optim_state["state"].pop(key)
        halves = {name: value.chunk(2, dim=1) if torch.is_tensor(value) and value.dim() > 1 else (value, value)
                  for name, value in moments.items()}
        optim_state["state"][old + "w1"] = {name: pair[0].clone() for name, pair in halves.items()}
        optim_state["state"][old + "w3"] = {name: pair[1].clone() for name, pair in halves.items()}
        for group in optim_state["param_groups"]:
            group["params"] = [p for name in group["params"] for p in ((old + "w1", old + "w3") if name == key else (name,))]
    torch.save({k: v.clone() for k, v in model_state.items()}, saved / "model.pt")
    torch.save(optim_state, saved / "optim.pt")
    resumed = on_ranks(1, train, job("moe", preset="tiny_moe", steps=6, every=3), str(storage), "s2")
    assert [step for step, _ in resumed] == [4, 5, 6]
    assert torch.allclose(torch.tensor(losses(resumed)), torch.tensor(losses(straight)[3:]), atol=1e-5)


def test_only_committed_checkpoints_are_resumed_and_old_ones_pruned(tmp_path: Path) -> None:
    storage = tmp_path / "s"
    on_ranks(1, train, job(steps=6, every=2, keep=3), str(storage))
    job_dir = storage / "jobs" / "t"
    found = checkpoint.checkpoint_dirs(job_dir)
    assert [p.name for p in found] == ["rayfleet-step-00000002", "rayfleet-step-00000004", "rayfleet-step-00000006"]
    (found[-1] / checkpoint.MARKER).unlink()  # as if the process died before committing step 6
    assert checkpoint.latest_checkpoint(job_dir) == found[-2]
    later = job_dir / "runs" / "s2"
    checkpoint.prune(job_dir, keep=1, current_run=later)
    assert [p.name for p in checkpoint.checkpoint_dirs(job_dir, committed=False)] == ["rayfleet-step-00000004"]
    metrics = [json.loads(line) for line in (job_dir / "runs" / "s1" / METRICS).read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]


class Planted:
    """A pickle that runs code when unpickled: it would create `ran` (a file)."""

    def __init__(self, ran: Path) -> None:
        self.ran = ran

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.ran,))


@pytest.mark.parametrize("layout", ["sharded", "legacy"])
def test_a_checkpoint_that_would_run_code_when_loaded_is_refused(tmp_path: Path, layout: str) -> None:
    """Whoever can write the storage cannot run code on the ranks: DCP's metadata is unpickled
    through an allow-list, every other file of a checkpoint (RNG state; the legacy layout's
    optimizer state too) loads with weights_only, so a planted object is refused unrun."""
    storage = tmp_path / "s"
    on_ranks(1, train, job(steps=2, every=2), str(storage))
    latest = checkpoint.latest_checkpoint(storage / "jobs" / "t")
    names = (".metadata", "rng-00000.pt")
    if layout == "legacy":
        rewrite_in_legacy_layout(latest, job(steps=2, every=2), storage)
        names = ("optim.pt", "rng.pt")
    ran = tmp_path / "code-ran"
    for name in names:
        saved = (latest / name).read_bytes()
        if name == ".metadata":
            (latest / name).write_bytes(pickle.dumps(Planted(ran)))
        else:
            torch.save({"state": Planted(ran)}, latest / name)
        with pytest.raises(Exception, match="Weights only load failed|refused to unpickle pathlib.Path.touch"):
            trainer(job(steps=4, every=2), storage, submission="s2").resume()
        assert not ran.exists()
        (latest / name).write_bytes(saved)
    on_ranks(1, train, job(steps=4, every=2), str(storage), "s3")  # the real files resume fine


def test_learning_rate_warms_up_then_decays_to_the_floor() -> None:
    spec = job(steps=100, optimizer={"lr": 1.0, "warmup_steps": 10, "min_lr_ratio": 0.1})
    rates = [lr_at(spec, step) for step in range(100)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(rates[10:], rates[11:]))
    assert rates[-1] == pytest.approx(0.1, abs=1e-3)


def test_on_prepared_shards_2_ranks_then_1_read_the_same_windows_and_validate(tmp_path: Path) -> None:
    """A run on shards: 2 ranks to step 4's checkpoint, resumed on 1 rank to step 8, reads the batches of an
    uninterrupted 1-rank run (the digests agree step by step, the losses too); the validation loss
    is computed on all ranks at eval_every and the last step; the checkpoint names the data
    position."""
    from tests.support.corpus import write_corpus

    write_corpus(tmp_path / "c", sizes=[700, 500], vocab=256)
    data = {"tokens": str(tmp_path / "c"), "seq_len": 32, "global_batch": 4,
            "validation": {"fraction": 0.1, "eval_every": 3, "eval_batches": 2}}
    straight = str(tmp_path / "a")
    on_ranks(1, train, job(steps=8, every=4, data=data), straight)
    storage = str(tmp_path / "b")
    on_ranks(2, train, job(steps=8, every=4, workers=2, data=data), storage, "s1")
    newest = checkpoint.latest_checkpoint(Path(storage) / "jobs" / "t")
    assert newest is not None and newest.name.endswith("00000008")
    shutil.rmtree(newest)  # as if the 2-rank run had died after step 4's checkpoint
    on_ranks(1, train, job(steps=8, every=4, data=data), storage, "s2")

    def curve(root: str, submission: str) -> list[dict]:
        path = Path(root) / "jobs" / "t" / "runs" / submission / METRICS
        return [json.loads(line) for line in path.read_text().splitlines()]

    whole = curve(straight, "s1")
    parts = curve(storage, "s1")[:4] + curve(storage, "s2")
    assert [p["step"] for p in parts] == [p["step"] for p in whole] == list(range(1, 9))
    assert [p["batch_crc"] for p in parts] == [p["batch_crc"] for p in whole]
    assert max(abs(a["loss"] - b["loss"]) for a, b in zip(parts, whole)) < 1e-4
    assert [p["val_step"] for p in whole] == [None, None, 3, 3, 3, 6, 6, 8]
    assert abs(parts[2]["val_loss"] - whole[2]["val_loss"]) < 1e-4  # on 2 ranks as on 1
    assert abs(whole[-1]["val_perplexity"] - math.exp(whole[-1]["val_loss"])) < 1e-9
    meta = checkpoint.read_meta(checkpoint.latest_checkpoint(Path(storage) / "jobs" / "t"))
    windows = (1080 - 1) // 32  # the training part: 1,200 tokens less the 10% held out
    assert meta["data"] == {"epoch": 32 // windows, "position": 32 % windows, "samples": 32}
