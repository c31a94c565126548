"""Expert parallelism over 2 and 4 gloo processes equals the single-process model:
forward outputs, losses, and gradients after the documented reduction rule."""

from __future__ import annotations

import copy
import dataclasses
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rayfleet.model import (
    ModelConfig,
    Transformer,
    apply_expert_parallel,
    expert_parameter_names,
    expert_parameters,
    gather_full_state_dict,
    load_full_state_dict,
    non_expert_parameters,
    reduce_expert_gradients,
)

PER_RANK = 2  # sequences per rank
CONFIG = ModelConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32,
                     n_experts=8, top_k=2, expert_hidden=24, init_std=0.2, aux_loss_coef=0.1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-9, msg=what)


def worker(rank: int, world: int, port: int) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        check_equivalence(rank, world)
        if world == 4:
            check_data_parallel_times_expert_parallel(rank)
    finally:
        dist.destroy_process_group()


def check_equivalence(rank: int, world: int) -> None:
    torch.manual_seed(0)  # same full model and batch on every rank
    full = Transformer(CONFIG).double()
    tokens = torch.randint(0, 64, (world * PER_RANK, 12))
    targets = torch.randint(0, 64, (world * PER_RANK, 12))
    ref = full(tokens, targets)
    (ref.loss + ref.aux_loss).backward()
    with torch.no_grad():
        ref_logits = full(tokens).logits

    ep = apply_expert_parallel(copy.deepcopy(full), dist.group.WORLD)
    ep.zero_grad()
    local = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    out = ep(tokens[local], targets[local])
    (out.loss + out.aux_loss).backward()

    # forward: logits of my slice, and the mean over ranks of loss and aux loss
    with torch.no_grad():
        close(ep(tokens[local]).logits, ref_logits[local], "logits")
    losses = torch.stack([out.loss.detach(), out.aux_loss.detach()])
    dist.all_reduce(losses)
    close(losses / world, torch.stack([ref.loss, ref.aux_loss]).detach(), "loss, aux_loss")

    # gradients: DDP-average the replicated params, rescale the expert shards
    for p in non_expert_parameters(ep):
        dist.all_reduce(p.grad)
        p.grad /= world
    reduce_expert_gradients(ep)
    full_grads = {n: p.grad for n, p in full.named_parameters()}
    expert_ids = {id(p) for p in expert_parameters(ep)}
    local_experts = CONFIG.n_experts // world
    n_checked = 0
    for name, p in ep.named_parameters():
        want = full_grads[name]
        if id(p) in expert_ids:
            assert p.shape[0] == local_experts
            want = want[rank * local_experts:(rank + 1) * local_experts]
        close(p.grad, want, name)
        n_checked += 1
    assert n_checked == len(full_grads)

    # checkpoints: gather the shards back, and load a full state dict into a sharded model
    gathered = gather_full_state_dict(ep)
    for name, value in full.state_dict().items():
        assert torch.equal(gathered[name], value), name
    torch.manual_seed(1)
    fresh = apply_expert_parallel(Transformer(CONFIG).double(), dist.group.WORLD)
    load_full_state_dict(fresh, full.state_dict())
    with torch.no_grad():
        close(fresh(tokens[local]).logits, ref_logits[local], "reloaded logits")


def check_data_parallel_times_expert_parallel(rank: int) -> None:
    """4 ranks = 2 EP groups {0,1}, {2,3} of 2 ranks; ranks {0,2} and {1,3} hold the same
    expert shard (replica groups). The documented rule: DDP-average the replicated params
    over all 4 ranks, divide expert grads by the EP size and average over the replicas.
    The load-balancing statistic is pooled per EP group, so aux_loss_coef is 0 here."""
    cfg = dataclasses.replace(CONFIG, aux_loss_coef=0.0)
    ep_groups = [dist.new_group([0, 1]), dist.new_group([2, 3])]
    replica_groups = [dist.new_group([0, 2]), dist.new_group([1, 3])]
    torch.manual_seed(0)
    full = Transformer(cfg).double()
    tokens = torch.randint(0, 64, (4 * PER_RANK, 12))
    ref = full(tokens, tokens)
    (ref.loss + ref.aux_loss).backward()

    model = apply_expert_parallel(copy.deepcopy(full), ep_groups[rank // 2])
    model.zero_grad()
    local = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    out = model(tokens[local], tokens[local])
    (out.loss + out.aux_loss).backward()
    for p in non_expert_parameters(model):
        dist.all_reduce(p.grad)
        p.grad /= 4
    reduce_expert_gradients(model, replica_group=replica_groups[rank % 2])
    full_grads = {n: p.grad for n, p in full.named_parameters()}
    expert_ids = {id(p) for p in expert_parameters(model)}
    shard = slice((rank % 2) * 4, (rank % 2 + 1) * 4)
    for name, p in model.named_parameters():
        close(p.grad, full_grads[name][shard] if id(p) in expert_ids else full_grads[name], name)


@pytest.mark.parametrize("world", [2, 4])
def test_expert_parallel_equals_single_process(world: int) -> None:
    mp.spawn(worker, args=(world, free_port()), nprocs=world, join=True)


def test_expert_and_non_expert_parameters_partition_the_model() -> None:
    model = Transformer(CONFIG)
    experts = list(expert_parameters(model))
    others = list(non_expert_parameters(model))
    assert len(experts) == 2 * CONFIG.n_layers  # w13 and w2 per layer
    assert {id(p) for p in experts}.isdisjoint({id(p) for p in others})
    assert sum(p.numel() for p in experts + others) == sum(p.numel() for p in model.parameters())
    names = expert_parameter_names(model)
    assert names == [f"layers.{i}.ffn.experts.{w}" for i in range(CONFIG.n_layers) for w in ("w13", "w2")]
