"""What a health agent reports: one result per check, as plain values."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum
from typing import Any, Mapping


class Status(str, Enum):
    OK = "ok"
    WARN = "warn"      # below a threshold but working: the node is degraded, kept and watched
    FAIL = "fail"      # the node must not run work


@dataclass(frozen=True)
class Check:
    name: str                  # e.g. "gpu0.xid", "gpu0.temperature", "disk", "burn", "link"
    status: Status
    message: str = ""
    value: float | None = None
    threshold: float | None = None
    hardware: bool = False     # a failed hardware check quarantines the node instead of deleting it

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["status"] = self.status.value
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Check:
        return cls(**{**data, "status": Status(data["status"])})


@dataclass(frozen=True)
class HealthReport:
    instance: str
    node_id: str
    sent_at: float                       # the agent's clock
    checks: tuple[Check, ...] = ()
    sequence: int = 0
    received_at: float = 0.0             # the controller's clock, set on receipt (the heartbeat)
    simulated: bool = True               # telemetry from the simulated source, not NVML

    def failing(self) -> list[Check]:
        return [c for c in self.checks if c.status is Status.FAIL]

    def warning(self) -> list[Check]:
        return [c for c in self.checks if c.status is Status.WARN]

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["checks"] = [c.to_json() for c in self.checks]
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> HealthReport:
        return cls(**{**data, "checks": tuple(Check.from_json(c) for c in data.get("checks", ()))})
