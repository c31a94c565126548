"""The job's training loop on one GPU with the default policy (bf16-mixed, compile auto: compiled
with CUDA graphs): fp32 master weights under a bf16 working copy, one compilation, and the eager
fp32-master loss."""
from __future__ import annotations

from pathlib import Path

import torch

from rayfleet.jobs.client.spec import JobSpec
from rayfleet.jobs.contract import RunInfo
from rayfleet.jobs.supervision import history
from rayfleet.jobs.worker.loop import Trainer


def run(tmp_path: Path, compile_setting: bool | str, steps: int = 4) -> tuple[Trainer, list[tuple[int, float]]]:
    spec = JobSpec.model_validate({
        "name": "g", "pool": "p", "steps": steps, "compile": compile_setting, "model": {"preset": "tiny"},
        "data": {"seq_len": 64, "global_batch": 8}, "checkpoint": {"every": 100}, "optimizer": {"warmup_steps": 2}})
    storage = tmp_path / str(compile_setting)
    run_info = RunInfo(storage=str(storage), device="cuda", gpus_per_worker=1, submission_id="s1")
    trainer = Trainer(spec, run_info, 0, 1, torch.device("cuda"), storage / "jobs" / "g")
    return trainer, trainer.train()


def test_the_default_job_compiles_once_and_matches_eager(tmp_path: Path) -> None:
    import torch._dynamo.utils as dynamo_utils

    dynamo_utils.counters.clear()
    compiled, curve = run(tmp_path, "auto")
    assert compiled.compiled and compiled.graphs
    assert compiled.precision.name == "bf16-mixed"
    assert {p.dtype for p in compiled.par.model.parameters()} == {torch.float32}  # the master weights
    assert {p.dtype for p in compiled.runner.parameters()} == {torch.bfloat16}    # what the graph runs on
    # two graphs, each compiled once: the model's step, and the working copy's clip + AdamW + copy-back
    assert dynamo_utils.counters["stats"]["unique_graphs"] == 2, dict(dynamo_utils.counters["stats"])
    events = history.events(compiled.run.storage, "g")
    assert [e["step"] for e in events if e["event"] == "compiled"] == [1]
    _, eager = run(tmp_path, False)
    assert torch.allclose(torch.tensor([l for _, l in curve]), torch.tensor([l for _, l in eager]), rtol=1e-2), \
        (curve, eager)
