"""GPU tests run only where a CUDA device exists: without one the session stops with a message
instead of skipping every test (a skipped test proves nothing)."""

from __future__ import annotations

import pytest
import torch


def pytest_sessionstart(session: pytest.Session) -> None:
    if not torch.cuda.is_available():
        raise pytest.UsageError("tests_gpu/ needs a CUDA GPU; run `make test-gpu` on a GPU machine "
                                "(CI runs `make test`, which does not collect these)")
    torch.manual_seed(0)
