"""The hang evidence on CUDA: the collectives a rank reports are NCCL's, read from NCCL's own flight
recorder (cluster/health/flight_recorder.py `_dump`). One GPU, a group of one: what the recorder
holds does not depend on the group's size, and two ranks need two GPUs (NCCL refuses a device
twice in one communicator)."""
from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist

from rayfleet.cluster.health import flight_recorder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_cuda_rank_reports_its_nccl_collectives_and_its_gloo_side_group() -> None:
    os.environ[flight_recorder.BUFFER_ENV] = str(flight_recorder.BUFFER_SIZE)  # as a job's environment sets it
    store = dist.TCPStore("127.0.0.1", _free_port(), 1, True)
    dist.init_process_group("nccl", store=store, rank=0, world_size=1, device_id=torch.device("cuda", 0))
    try:
        side = dist.new_group(backend="gloo")  # the job's notices and checkpoints go through one like it
        grads = torch.ones(1 << 20, device="cuda")
        for _ in range(3):
            dist.all_reduce(grads)
        dist.broadcast(grads, 0)
        dist.all_reduce(torch.ones(4), group=side)
        torch.cuda.synchronize()
        newest = flight_recorder.summary(flight_recorder._dump())
        ops = [entry["op"] for entry in newest]
        assert ops.count("nccl:all_reduce") == 3 and "nccl:broadcast" in ops, newest
        assert all(entry["retired"] or entry["state"] == "completed" for entry in newest), newest
    finally:
        dist.destroy_process_group()
