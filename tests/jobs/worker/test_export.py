"""`rayfleet export`: a job's checkpoint, written by 2 expert-parallel ranks, becomes one
safetensors file plus its config, which loads into model.Transformer with no training code and
gives the logits the trained model gives; a step with no checkpoint is refused (exit 2)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_model

from rayfleet.jobs.supervision import history
from rayfleet.jobs.worker import checkpoint
from rayfleet.model import ModelConfig, Transformer
from tests.conftest import rayfleet
from tests.jobs.worker.test_checkpoints import job, single
from tests.support.checkpoints import trainer
from tests.support.distributed import on_ranks


def train(rank: int, world: int, spec, storage: str) -> None:  # type: ignore[no-untyped-def]
    trainer(spec, Path(storage), rank, world).train()


def test_an_exported_model_loads_without_rayfleets_training_code_and_gives_the_same_logits(tmp_path: Path) -> None:
    spec = job("moe", workers=2, ep=2, preset="tiny_moe", steps=4)
    history.record(tmp_path, "t", "submitted", submission_id="t", spec=spec.model_dump(mode="json"))
    on_ranks(2, train, spec, str(tmp_path))
    latest = checkpoint.latest_checkpoint(tmp_path / "jobs" / "t")
    assert latest is not None and checkpoint.read_meta(latest)["world"] == 2
    reference = trainer(single(spec), tmp_path, submission="reference")  # the resume path's own loader
    reference.checkpointer.load(latest)

    out = tmp_path / "exported"
    done = rayfleet("export", "t", "--storage", str(tmp_path), "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert "exported t step 4" in done.stdout
    source = json.loads((out / "rayfleet.json").read_text())
    assert (source["job"], source["step"], source["checkpoint"]) == ("t", 4, str(latest))

    model = Transformer(ModelConfig(**json.loads((out / "config.json").read_text())))
    missing, unexpected = load_model(model, out / "model.safetensors")
    assert not missing and not unexpected
    tokens = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    model.eval()
    reference.par.model.eval()
    with torch.no_grad():
        logits = model(tokens).logits
        assert torch.equal(logits, reference.par.model(tokens).logits)
        assert not torch.equal(logits, Transformer(model.config).eval()(tokens).logits)  # not a fresh model


def test_a_step_without_a_committed_checkpoint_is_refused_naming_the_steps_there(tmp_path: Path) -> None:
    spec = job(steps=2)
    history.record(tmp_path, "t", "submitted", submission_id="t", spec=spec.model_dump(mode="json"))
    trainer(spec, tmp_path).train()
    refused = rayfleet("export", "t", "--storage", str(tmp_path), "--step", "3", "-o", str(tmp_path / "out"))
    assert refused.returncode == 2, refused.stderr
    assert "--step: got 3" in refused.stderr and "steps: 2" in refused.stderr
    assert not (tmp_path / "out").exists()  # nothing written
    unknown = rayfleet("export", "nope", "--storage", str(tmp_path), "-o", str(tmp_path / "out"))
    assert unknown.returncode == 2 and "no committed checkpoint" in unknown.stderr
