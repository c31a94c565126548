"""Whether a Triton kernel of this package can run in this process."""

from __future__ import annotations

import importlib.util
import os

import torch


def triton_enabled(switch: str) -> bool:
    """Triton installed and a CUDA device present, unless the environment variable ``switch`` is
    "0" (each kernel's way back to the PyTorch path, for A/B runs)."""
    if os.environ.get(switch, "1") == "0":
        return False
    return importlib.util.find_spec("triton") is not None and torch.cuda.is_available()
