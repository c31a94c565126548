"""Run a function on N gloo ranks in fresh processes and collect what rank 0 returns."""
from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rayfleet.cluster.head.processes import free_port


def _entry(rank: int, world: int, port: int, fn: Callable[..., Any], args: tuple, out: str) -> None:
    # gloo on the loopback interface, whatever the machine's hostname resolves to
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = fn(rank, world, *args)
        if rank == 0:
            Path(out).write_bytes(pickle.dumps(result))
    finally:
        if world > 1:
            dist.destroy_process_group()


def on_ranks(world: int, fn: Callable[..., Any], *args: Any) -> Any:
    """fn(rank, world, *args) on `world` processes joined by gloo; rank 0's return value."""
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "result.pkl")
        mp.spawn(_entry, args=(world, free_port(), fn, args, out), nprocs=world, join=True)
        return pickle.loads(Path(out).read_bytes())
