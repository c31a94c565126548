"""The matmul burn: achieved bf16 TFLOP/s on each GPU, the slowest one reported.

On a simulated node the figure is the pool's expected one scaled by the simulated speed (a `slow`
fault), so policy and remediation run the same path everywhere; torch is imported only on nodes
with real GPUs, keeping agents on CPU heads and simulated nodes small.
"""
from __future__ import annotations

import time

from rayfleet.cluster.health.telemetry import SimulatedGpus, Telemetry

SIZE = 8192
"""8192^3 bf16: large enough to reach steady tensor-core throughput on Hopper (798 TFLOP/s measured
on an H100 here), small enough (~400 MB of operands) to run beside a job's memory."""


def run_burn(telemetry: Telemetry, expected_tflops: float, seconds: float = 2.0) -> float:
    if isinstance(telemetry, SimulatedGpus):
        return expected_tflops * telemetry.speed
    import torch

    slowest = float("inf")
    for device in range(torch.cuda.device_count()):
        with torch.cuda.device(device):
            a = torch.randn(SIZE, SIZE, dtype=torch.bfloat16, device="cuda")
            b = torch.randn(SIZE, SIZE, dtype=torch.bfloat16, device="cuda")
            for _ in range(3):  # warm-up: clocks ramp, cuBLAS picks its kernel
                a @ b
            torch.cuda.synchronize()
            count, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds / max(1, torch.cuda.device_count()):
                a @ b
                count += 1
            torch.cuda.synchronize()
            elapsed = time.perf_counter() - started
            slowest = min(slowest, 2 * SIZE**3 * count / elapsed / 1e12)
            del a, b
    return slowest if slowest != float("inf") else 0.0
