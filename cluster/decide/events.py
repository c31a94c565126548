"""Every decision the controller makes leaves an event with its reason (`rayfleet events`)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterable, Mapping


@dataclass(frozen=True)
class Event:
    time: float
    kind: str            # launch, joined, replace, terminate, scale, adopt, drain, failed, ...
    message: str
    pool: str | None = None
    instance: str | None = None
    reason: str = ""     # the check, policy or command that caused it

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Event:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


def bounded(events: Iterable[Event], limit: int) -> list[Event]:
    """The newest `limit` events, oldest first."""
    events = list(events)
    return events[-limit:] if limit else []
