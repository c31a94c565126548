"""The losses of logged steps, read from the GPU without stalling it.

Reading a loss with `float()` right after its step waits for the GPU to finish that step, and the
host then has nothing queued: the GPU idles while the next step is launched. Instead, a logged
step's loss is copied to pinned host memory behind an event; the loop publishes it a step or two
later, once the event has passed (`ready`), and waits only where it must have it (a checkpoint's
report, the end). On the CPU the value is there at once.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Logged:
    step: int
    value: torch.Tensor   # on the host once `event` has passed
    event: Any            # torch.cuda.Event, or None on the CPU
    figures: dict[str, Any]

    def read(self) -> float:
        if self.event is not None:
            self.event.synchronize()
        return float(self.value)


class LossLog:
    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.pending: deque[Logged] = deque()

    def add(self, step: int, loss: torch.Tensor, **figures: Any) -> None:
        """`loss`: a 0-d tensor on the device (already averaged over ranks); `figures`: what is
        published with it."""
        if self.cuda:
            host = torch.empty((), dtype=torch.float32, pin_memory=True)
            host.copy_(loss.detach().float(), non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self.pending.append(Logged(step, host, event, figures))
        else:
            self.pending.append(Logged(step, loss.detach().float(), None, figures))

    def ready(self, wait: bool = False) -> list[tuple[int, float, dict[str, Any]]]:
        """The logged steps whose loss has reached the host, oldest first (all of them if `wait`)."""
        out = []
        while self.pending and (wait or self.pending[0].event is None or self.pending[0].event.query()):
            item = self.pending.popleft()
            out.append((item.step, item.read(), item.figures))
        return out
