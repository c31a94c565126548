"""Shared setup of the model tests: one intra-op thread (the CI box has 2 cores and
other jobs), and deterministic seeds per test."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
