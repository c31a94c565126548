"""A fleet's folder under RAYFLEET_HOME as `rayfleet up` leaves it, with no process behind it: for
commands that only read it (completion, errors that name the fleet)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable


def fleet_folder(home: Path, name: str, spec: str = "", head: dict[str, Any] | None = None,
                 jobs: Iterable[str] = ()) -> Path:
    """<home>/fleets/<name>, made the current fleet: fleet.yaml (`name:` then `spec`), head.json
    if `head` is given, and a storage folder for each of `jobs`."""
    folder = home / "fleets" / name
    folder.mkdir(parents=True)
    (folder / "fleet.yaml").write_text(f"name: {name}\n{spec}")
    if head is not None:
        (folder / "head.json").write_text(json.dumps(head))
    for job in jobs:
        (folder / "storage" / "jobs" / job).mkdir(parents=True)
    (home / "current").write_text(name + "\n")
    return folder
