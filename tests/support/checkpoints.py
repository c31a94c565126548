"""Checkpoints as tests need them: a checkpoint rewritten in the unsharded layout of before
(model.pt, optim.pt, rng.pt), and model + optimizer state read back for comparison."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

from rayfleet.jobs.contract import RunInfo
from rayfleet.jobs.client.spec import JobSpec
from rayfleet.jobs.worker import checkpoint
from rayfleet.jobs.worker.loop import Trainer


def trainer(spec: JobSpec, storage: Path, rank: int = 0, world: int = 1, submission: str = "t") -> Trainer:
    run = RunInfo(storage=str(storage), device="cpu", gpus_per_worker=0, submission_id=submission)
    return Trainer(spec, run, rank, world, torch.device("cpu"), storage / "jobs" / spec.name)


def full_state(made: Trainer) -> dict[str, Any]:
    """The trainer's model and optimizer state, unsharded and keyed by parameter name (one process)."""
    return {"model": {k: v.detach().clone() for k, v in get_model_state_dict(made.par.model).items()},
            "optim": get_optimizer_state_dict(made.par.model, made.optimizer)}


def rewrite_in_legacy_layout(path: Path, spec: JobSpec, storage: Path) -> None:
    """Rewrite a committed checkpoint written by one process in the layout rayfleet wrote before
    sharded checkpoints: rank 0's torch.save of the full state keyed by parameter name."""
    made = trainer(spec, storage, submission="legacy-writer")
    made.checkpointer.load(path)
    state = full_state(made)
    rng = torch.load(path / "rng-00000.pt", weights_only=True)
    for written in [*path.glob("*.distcp"), path / ".metadata", *path.glob("rng-*.pt")]:
        written.unlink()
    torch.save(state["model"], path / "model.pt")
    torch.save(state["optim"], path / "optim.pt")
    torch.save([rng], path / "rng.pt")
    assert checkpoint.read_meta(path)["world"] == 1
