"""A trained model out of rayfleet: `rayfleet export JOB [--step N] -o DIR`.

Reads one committed checkpoint (sharded, any world size, or the unsharded layout of before) on one
process, without a process group, through the same loader a resumed job uses, and writes what a
user takes elsewhere: `model.safetensors` (the weights, float32 or the dtype they trained in;
tied tensors stored once, as safetensors' `save_model` does), `config.json` (the ModelConfig's
fields: `Transformer(ModelConfig(**config))` rebuilds the model) and `rayfleet.json` (the job,
step and checkpoint it came from). Loading it needs torch, safetensors and rayfleet.model only:
`safetensors.torch.load_model(Transformer(ModelConfig(**json.load(open("config.json")))), path)`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from rayfleet.errors import BadInput, NotFound
from rayfleet.jobs.client.spec import DataSection, JobSpec
from rayfleet.jobs.contract import RunInfo
from rayfleet.jobs.supervision import history
from rayfleet.jobs.worker import checkpoint

MODEL_FILE, CONFIG_FILE, SOURCE_FILE = "model.safetensors", "config.json", "rayfleet.json"


def choose_checkpoint(storage: str | Path, name: str, step: int | None) -> checkpoint.Location:
    """The job's newest committed checkpoint, or the one of `step`; NotFound naming what exists."""
    where = checkpoint_home(storage, name)
    found = checkpoint.checkpoint_dirs(where)
    if not found:
        raise NotFound(f"job {name!r}: no committed checkpoint under {where}; a job writes one every "
                       f"`checkpoint.every` steps (`rayfleet job {name}` shows its progress)")
    if step is None:
        return found[-1]
    for path in found:
        if checkpoint.read_meta(path).get("step") == step:
            return path
    steps = ", ".join(str(checkpoint.read_meta(p).get("step")) for p in found)
    raise BadInput(f"--step: got {step}: job {name!r} has no committed checkpoint of that step; steps: {steps}")


def checkpoint_home(storage: str | Path, name: str) -> checkpoint.Location:
    """Where the job's checkpoints are, as its newest submission chose (its spec's checkpoint.storage,
    else the fleet's checkpoint_storage in its run info): the job's folder, or a prefix on S3."""
    job_dir = history.job_dir(storage, name)
    submitted = [e for e in history.events(storage, name) if e["event"] == "submitted" and "spec" in e]
    if not submitted:
        return job_dir
    last = submitted[-1]
    run = RunInfo.from_json(last["run"]) if "run" in last else RunInfo(storage=str(storage), device="cpu",
                                                                       gpus_per_worker=0)
    return checkpoint.home(job_dir, JobSpec.model_validate(last["spec"]), run)


def spec_of(storage: str | Path, name: str, path: checkpoint.Location) -> JobSpec:
    """The job spec the checkpoint was trained with: its submission's, from the job's history."""
    submission = path.parent.name  # runs/<submission id>/rayfleet-step-N
    submitted = [e for e in history.events(storage, name) if e["event"] == "submitted" and "spec" in e]
    mine = [e for e in submitted if e.get("submission_id") == submission] or submitted
    if not mine:
        raise NotFound(f"job {name!r}: its history under {history.job_dir(storage, name)} records no submitted "
                       f"spec, so the model's shape is unknown")
    return JobSpec.model_validate(mine[-1]["spec"])


def export(storage: str | Path, name: str, out: Path, step: int | None = None) -> dict[str, Any]:
    """Write the model of one checkpoint of job `name` to `out`; returns what `rayfleet.json` says."""
    from safetensors.torch import save_model

    from rayfleet.jobs.worker.loop import Trainer

    path = choose_checkpoint(storage, name, step)
    spec = spec_of(storage, name, path)
    # one process, no process group: the loader reads any world size's shards into this placement;
    # the built-in corpus in place of the job's (its files need not be reachable from here)
    spec = spec.model_copy(update={"compile": False, "workers": 1,
                                   "parallelism": spec.parallelism.model_copy(update={"expert_parallel": 1}),
                                   "data": DataSection(seq_len=spec.data.seq_len, global_batch=1)})
    run = RunInfo(storage=str(storage), device="cpu", gpus_per_worker=0, submission_id="export")
    made = Trainer(spec, run, 0, 1, torch.device("cpu"), history.job_dir(storage, name))
    meta = made.checkpointer.load(path)
    out.mkdir(parents=True, exist_ok=True)
    model = made.par.model
    save_model(model, str(out / MODEL_FILE), metadata={"format": "pt", "job": name, "step": str(meta["step"])})
    (out / CONFIG_FILE).write_text(json.dumps(made.config.to_dict(), indent=2) + "\n")
    source = {"job": name, "step": int(meta["step"]), "checkpoint": str(path), "preset": spec.model.preset,
              "parameters": sum(p.numel() for p in model.parameters()),
              "dtype": str(next(model.parameters()).dtype).removeprefix("torch.")}
    (out / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n")
    for written in (MODEL_FILE, CONFIG_FILE, SOURCE_FILE):
        os.chmod(out / written, 0o644)
    return {**source, "out": str(out)}
