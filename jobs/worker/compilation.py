"""Whether and how a job's model is compiled.

`compile: auto` compiles on CUDA, where torch.compile's fused kernels pay for their compilation
time within a few steps, and runs eager on CPU, where compilation takes minutes for little gain.
`compile: false` turns it off everywhere. The first step of a compiled attempt compiles: the loop
records its duration as a `compiled` event, and goodput counts that step as `compile`, not
training (jobs/supervision/goodput.py).

A compiled job of one worker on CUDA also replays its forward and backward as CUDA graphs
(torch.compile's "reduce-overhead"), as the benchmark's fastest rows do: the step's shapes are
static there (the MoE keeps its expert shapes static as well), and with one worker no collective
runs inside the graph. Several workers compile without graphs (DDP's and FSDP's communication
hooks, and expert parallelism's all-to-all, run between the graphs' kernels). `RAYFLEET_CUDA_GRAPHS=0`
in the job's environment turns the graphs off.
"""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from rayfleet.names import CUDA_GRAPHS_ENV


def enabled(setting: bool | str, device: torch.device) -> bool:
    """The spec's `compile` (true, false or auto) on `device`."""
    if setting == "auto":
        return device.type == "cuda"
    return bool(setting)


def cuda_graphs(setting: bool | str, device: torch.device, world: int) -> bool:
    """Whether the compiled step replays as CUDA graphs."""
    return (enabled(setting, device) and device.type == "cuda" and world == 1
            and os.environ.get(CUDA_GRAPHS_ENV, "1") != "0")


def forward_of(module: nn.Module, setting: bool | str, device: torch.device, world: int = 1) -> Any:
    """The callable that runs the model's forward: compiled (with CUDA graphs where they apply)
    or the module itself."""
    if not enabled(setting, device):
        return module
    if cuda_graphs(setting, device, world):
        return torch.compile(module, mode="reduce-overhead")
    return torch.compile(module)


def step_begins(graphs: bool) -> None:
    """Before each step's forward: tell the CUDA-graph trees a new step starts, so the previous
    step's graph outputs may be overwritten."""
    if graphs:
        torch.compiler.cudagraph_mark_step_begin()
