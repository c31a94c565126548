"""A fleet's folder on the machine that runs `rayfleet up`: token, head record, node records, logs.

`RAYFLEET_HOME` (default ~/.rayfleet) holds one folder per fleet and a `current` file naming the
fleet that commands without `--fleet` address, as kubectl's current context does.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import stat
from pathlib import Path
from typing import Any, Iterator

from rayfleet.errors import BadInput, NotFound


def rayfleet_home() -> Path:
    return Path(os.environ.get("RAYFLEET_HOME", "~/.rayfleet")).expanduser()


class FleetDir:
    def __init__(self, name: str, home: Path | None = None) -> None:
        self.name = name
        self.home = home or rayfleet_home()
        self.path = self.home / "fleets" / name

    # --- files -------------------------------------------------------------------------------
    @property
    def head_file(self) -> Path:
        return self.path / "head.json"

    @property
    def token_file(self) -> Path:
        return self.path / "auth_token"

    @property
    def nodes_dir(self) -> Path:
        return self.path / "nodes"

    @property
    def logs_dir(self) -> Path:
        return self.path / "logs"

    @property
    def storage_dir(self) -> Path:
        return self.path / "storage"

    @property
    def spec_file(self) -> Path:
        return self.path / "fleet.yaml"

    @property
    def temp_root(self) -> Path:
        """Ray's temp dirs, under a short path: Unix socket paths must stay under 107 bytes."""
        digest = hashlib.sha1(str(self.path.resolve()).encode()).hexdigest()[:8]
        return Path("/tmp") / f"rf-{digest}"

    def ensure_temp_root(self) -> Path:
        """`temp_root`, made private (0700) and checked to be this user's own folder: its name in
        /tmp is predictable, so another local user could have made it first (or a link in its
        place) to read the fleet's Ray sockets and logs. BadInput then; nothing starts."""
        root = self.temp_root
        with contextlib.suppress(FileExistsError):
            root.mkdir(mode=0o700)
        info = os.lstat(root)
        if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            raise BadInput(f"{root}: the Ray temp folder of fleet {self.name} exists but is not a folder owned by you "
                           f"(owner uid {info.st_uid}{', a symbolic link' if stat.S_ISLNK(info.st_mode) else ''}); "
                           f"remove it, or give this fleet another RAYFLEET_HOME")
        if info.st_mode & 0o077:
            root.chmod(0o700)
        return root

    def exists(self) -> bool:
        return self.path.is_dir()

    def ensure(self) -> Path:
        """The fleet's folder, private to its owner (0700, like RAYFLEET_HOME and its `fleets`):
        it holds the auth token, Redis's password and the logs. A folder an older version made
        0755 is tightened here."""
        self.home.parent.mkdir(parents=True, exist_ok=True)
        for folder in (self.home, self.home / "fleets", self.path):
            folder.mkdir(mode=0o700, exist_ok=True)
            if folder.stat().st_mode & 0o077:
                folder.chmod(0o700)
        return self.path

    def ensure_token(self) -> Path:
        """The fleet's Ray auth token (token authentication stays on); created once, mode 0600."""
        self.ensure()
        if not self.token_file.exists():
            fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32))
        return self.token_file

    def read_head(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.head_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Serialise up/down of one fleet across processes."""
        self.ensure()
        with open(self.path / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def current_fleet_name(home: Path | None = None) -> str | None:
    try:
        name = ((home or rayfleet_home()) / "current").read_text().strip()
        return name or None
    except FileNotFoundError:
        return None


def set_current_fleet(name: str | None, home: Path | None = None) -> None:
    path = (home or rayfleet_home()) / "current"
    if name is None:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(name + "\n")


def resolve_fleet(name: str | None) -> FleetDir:
    """The fleet a command addresses: `--fleet NAME`, else the current one."""
    chosen = name or current_fleet_name()
    if chosen is None:
        raise NotFound("no fleet is up: start one with `rayfleet up -f FLEET.yaml`, or pass --fleet NAME")
    fleet = FleetDir(chosen)
    if not fleet.exists():
        known = sorted(p.name for p in (fleet.home / "fleets").glob("*") if p.is_dir())
        raise NotFound(f"--fleet {chosen}: no such fleet under {fleet.home}; known: {', '.join(known) or 'none'}")
    return fleet
