"""The bf16-mixed policy on real gloo process groups: fp32 master weights and optimizer state,
bf16 compute, fp32 gradients, for DDP, FSDP2 and expert parallelism; it trains and follows fp32."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from rayfleet.jobs.client.spec import JobSpec
from rayfleet.jobs.contract import RunInfo
from rayfleet.jobs.worker.loop import Trainer
from rayfleet.jobs.worker.precision import resolve
from tests.support.distributed import on_ranks


def job(strategy: str, workers: int, ep: int, preset: str, precision: str) -> JobSpec:
    return JobSpec.model_validate({
        "name": "p", "pool": "p", "workers": workers, "steps": 8, "precision": precision,
        "parallelism": {"strategy": strategy, "expert_parallel": ep}, "model": {"preset": preset},
        "data": {"seq_len": 32, "global_batch": 4}, "checkpoint": {"every": 100},
        "optimizer": {"warmup_steps": 2, "lr": 3e-3}})


def local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def train_and_inspect(rank: int, world: int, spec: JobSpec, storage: str) -> dict[str, Any]:
    run = RunInfo(storage=storage, device="cpu", gpus_per_worker=0, submission_id="s1")
    trainer = Trainer(spec, run, rank, world, torch.device("cpu"), Path(storage) / "jobs" / spec.name)
    computed: set[torch.dtype] = set()
    grads: set[torch.dtype] = set()
    linears = [m for m in trainer.par.model.modules() if isinstance(m, nn.Linear)]
    for linear in linears:
        linear.register_forward_hook(lambda _m, _i, out: computed.add(out.dtype))

    def seen(optimizer: torch.optim.Optimizer, *_: Any) -> None:  # the reduced gradients AdamW reads
        grads.update(local(p.grad).dtype for g in optimizer.param_groups for p in g["params"] if p.grad is not None)

    trainer.optimizer.register_step_pre_hook(seen)
    pairs = trainer.train()
    state = [v for s in trainer.optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim()]
    return {"losses": [loss for _, loss in pairs],
            "params": {local(p).dtype for p in trainer.par.model.parameters()},
            "optimizer_state": {local(v).dtype for v in state},
            "optimizer_params": {local(p).dtype for g in trainer.optimizer.param_groups for p in g["params"]},
            "computed": computed, "grads": grads, "linears": len(linears)}


CASES = [("ddp", "tiny", 1), ("fsdp", "tiny", 1), ("moe", "tiny_moe", 2)]


@pytest.mark.parametrize("strategy,preset,ep", CASES)
def test_bf16_mixed_keeps_fp32_master_weights_and_computes_in_bf16(tmp_path: Path, strategy: str, preset: str,
                                                                   ep: int) -> None:
    mixed = on_ranks(2, train_and_inspect, job(strategy, 2, ep, preset, "bf16-mixed"), str(tmp_path / "m"))
    assert mixed["linears"] > 0
    assert mixed["params"] == {torch.float32}              # the master weights
    assert mixed["optimizer_params"] == {torch.float32}    # what AdamW updates
    assert mixed["optimizer_state"] == {torch.float32}     # its moments
    assert mixed["grads"] == {torch.float32}               # what is reduced across ranks
    assert mixed["computed"] == {torch.bfloat16}           # every matmul's output
    curve = mixed["losses"]
    assert curve[-1] < curve[0] - 0.3, curve
    exact = on_ranks(2, train_and_inspect, job(strategy, 2, ep, preset, "fp32"), str(tmp_path / "f"))
    assert exact["computed"] == {torch.float32}
    # bf16 rounds activations to 8 bits of mantissa (relative error ~0.4%); over 8 steps the loss
    # stays within 2% of the fp32 run's.
    assert torch.allclose(torch.tensor(curve), torch.tensor(exact["losses"]), rtol=2e-2), (curve, exact["losses"])


def train_one_worker(rank: int, world: int, spec: JobSpec, storage: str) -> dict[str, Any]:
    """bf16-mixed on one worker: what the forward ran on, what AdamW updated and saved, and
    whether the bf16 copy follows the fp32 master after the last step and after a resume."""
    run = RunInfo(storage=storage, device="cpu", gpus_per_worker=0, submission_id="s1")
    trainer = Trainer(spec, run, rank, world, torch.device("cpu"), Path(storage) / "jobs" / spec.name)
    assert trainer.working is not None
    computed: set[torch.dtype] = set()
    for linear in (m for m in trainer.runner.modules() if isinstance(m, nn.Linear)):
        linear.register_forward_hook(lambda _m, _i, out: computed.add(out.dtype))
    losses = [loss for _, loss in trainer.train()]

    def follows(made: Trainer) -> bool:
        return all(torch.equal(w, m.to(torch.bfloat16))
                   for w, m in zip(made.runner.parameters(), made.par.model.parameters()))

    state = [v for s in trainer.optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim()]
    resumed = Trainer(spec.model_copy(update={"steps": spec.steps + 2}), run, rank, world, torch.device("cpu"),
                      Path(storage) / "jobs" / spec.name)
    resumed.resume()
    return {"losses": losses, "computed": computed,
            "masters": {p.dtype for p in trainer.par.model.parameters()},
            "copies": {p.dtype for p in trainer.runner.parameters()},
            "optimizer_params": {p.dtype for g in trainer.optimizer.param_groups for p in g["params"]},
            "optimizer_state": {v.dtype for v in state}, "follows": follows(trainer),
            "resumed_step": resumed.step, "resumed_follows": follows(resumed),
            "resumed_equal": all(torch.equal(a, b) for a, b in zip(resumed.par.model.parameters(),
                                                                     trainer.par.model.parameters()))}


@pytest.mark.parametrize("preset", ["tiny", "tiny_moe"])
def test_bf16_mixed_on_one_worker_runs_a_bf16_copy_of_fp32_master_weights(tmp_path: Path, preset: str) -> None:
    seen = on_ranks(1, train_one_worker, job("ddp" if preset == "tiny" else "moe", 1, 1, preset, "bf16-mixed"),
                    str(tmp_path / "m"))
    assert seen["computed"] == seen["copies"] == {torch.bfloat16}    # forward and backward as pure bf16
    assert seen["masters"] == seen["optimizer_params"] == seen["optimizer_state"] == {torch.float32}
    assert seen["follows"]                      # the copy holds the updated master weights
    assert seen["resumed_step"] == 8 and seen["resumed_equal"] and seen["resumed_follows"]
    exact = on_ranks(1, train_and_inspect, job("ddp" if preset == "tiny" else "moe", 1, 1, preset, "fp32"),
                     str(tmp_path / "f"))
    assert seen["losses"][-1] < seen["losses"][0] - 0.3, seen["losses"]
    assert torch.allclose(torch.tensor(seen["losses"]), torch.tensor(exact["losses"]), rtol=2e-2)


def test_bf16_keeps_no_master_copy(tmp_path: Path) -> None:
    pure = on_ranks(1, train_and_inspect, job("ddp", 1, 1, "tiny", "bf16"), str(tmp_path))
    assert pure["params"] == pure["optimizer_state"] == pure["computed"] == {torch.bfloat16}


def test_auto_is_bf16_mixed_on_cuda_and_fp32_on_cpu() -> None:
    assert resolve("auto", torch.device("cuda")) == resolve("bf16-mixed", torch.device("cuda"))
    cuda = resolve("auto", torch.device("cuda"))
    assert (cuda.param_dtype, cuda.compute_dtype, cuda.reduce_dtype) == (torch.float32, torch.bfloat16, torch.float32)
    assert resolve("auto", torch.device("cpu")).name == "fp32"
    assert resolve("bf16-mixed", torch.device("cpu")).fsdp_policy().param_dtype == torch.bfloat16
    assert resolve("fp32", torch.device("cpu")).fsdp_policy() is None


def test_the_working_copys_step_is_torchs_clipped_adamw_on_the_master_weights() -> None:
    """WorkingCopy.step (one pass: clip, AdamW on fp32 masters from bf16 gradients, copy back)
    against torch: the same gradients cast to fp32, clip_grad_norm_, AdamW.step."""
    from rayfleet.jobs.worker.precision import WorkingCopy

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32), nn.Linear(32, 8))
    reference = nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32), nn.Linear(32, 8))
    reference.load_state_dict(model.state_dict())
    working = WorkingCopy(model, torch.bfloat16)

    def adamw(params: Any) -> torch.optim.AdamW:
        params = list(params)
        return torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
                                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                                 lr=1e-2, betas=(0.9, 0.95), eps=1e-8)

    ours, theirs = adamw(model.parameters()), adamw(reference.parameters())
    for step in range(4):
        for optimizer in (ours, theirs):
            for group in optimizer.param_groups:
                group["lr"] = 1e-2 * (step + 1) / 4
        x = torch.randn(64, 16).bfloat16()
        working.module(x).float().pow(2).mean().mul(50).backward()
        for mine, copy in zip(reference.parameters(), working.module.parameters()):
            mine.grad = copy.grad.float()
        norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), 1.0)
        assert norm > 1.0  # the clipping is exercised
        assert torch.allclose(working.step(ours, 1.0), norm, rtol=1e-5)
        theirs.step()
        theirs.zero_grad()
        for mine, exact, copy in zip(model.parameters(), reference.parameters(), working.module.parameters()):
            assert torch.allclose(mine, exact, rtol=1e-5, atol=1e-7)
            assert torch.equal(copy, mine.detach().bfloat16())
            assert copy.grad is None
    assert [float(ours.state[p]["step"]) for p in model.parameters()] == [4.0] * 6
    for mine, exact in zip(model.parameters(), reference.parameters()):
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.allclose(ours.state[mine][key], theirs.state[exact][key], rtol=1e-5, atol=1e-9)
