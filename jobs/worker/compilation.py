"""Whether and how a job's model is compiled.

`compile: auto` compiles on CUDA, where torch.compile's fused kernels pay for their compilation
time within a few steps, and runs eager on CPU, where compilation takes minutes for little gain.
`compile: false` turns it off everywhere. The first step of a compiled attempt compiles: the loop
records its duration as a `compiled` event, and goodput counts that step as `compile`, not
training (jobs/supervision/goodput.py).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


def enabled(setting: bool | str, device: torch.device) -> bool:
    """The spec's `compile` (true, false or auto) on `device`."""
    if setting == "auto":
        return device.type == "cuda"
    return bool(setting)


def forward_of(module: nn.Module, setting: bool | str, device: torch.device) -> Any:
    """The callable that runs the model's forward: compiled or the module itself."""
    return torch.compile(module) if enabled(setting, device) else module
