"""Median time of a CUDA call, by events around each call (the kernel benchmarks share it)."""
from __future__ import annotations

import statistics
from typing import Any, Callable

import torch


def median_ms(fn: Callable[..., Any], repeats: int, fresh: Callable[[], Any] | None = None, warmup: int = 3) -> float:
    """Median ms of ``fn()`` over ``repeats`` calls after ``warmup`` untimed ones; with ``fresh``,
    of ``fn(fresh())``, the input made outside the events (e.g. a copy for an in-place kernel)."""
    times = []
    for i in range(warmup + repeats):
        args = () if fresh is None else (fresh(),)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(*args)
        end.record()
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(start.elapsed_time(end))
    return statistics.median(times)
