"""Shell completion of pool, job and fleet names, through the script's real completion entry
(what `rayfleet --install-completion` wires into bash)."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import rayfleet


@pytest.fixture
def home(tmp_path: Path) -> Path:
    fleet = tmp_path / "fleets" / "demo"
    (fleet / "storage" / "jobs" / "moe-demo").mkdir(parents=True)
    (fleet / "storage" / "jobs" / "ddp-run").mkdir()
    (fleet / "fleet.yaml").write_text("name: demo\npools:\n  - name: h100\n  - name: a100\n")
    (tmp_path / "fleets" / "other").mkdir()
    (tmp_path / "current").write_text("demo\n")
    return tmp_path


def complete(home: Path, line: str) -> list[str]:
    words = line.split()
    cword = len(words) if line.endswith(" ") else len(words) - 1
    result = rayfleet(home=home, timeout=60, env={"_RAYFLEET_COMPLETE": "complete_bash", "COMP_WORDS": line,
                                                  "COMP_CWORD": str(cword)})
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_pools_jobs_and_fleets_complete(home: Path) -> None:
    assert complete(home, "rayfleet scale ") == ["h100", "a100"]
    assert complete(home, "rayfleet scale a") == ["a100"]
    assert complete(home, "rayfleet events --pool h") == ["h100"]
    assert complete(home, "rayfleet logs ") == ["ddp-run", "moe-demo"]
    assert complete(home, "rayfleet stop m") == ["moe-demo"]
    assert complete(home, "rayfleet status --fleet ") == ["demo", "other"]


def test_completion_without_a_fleet_offers_nothing_and_prints_no_error(tmp_path: Path) -> None:
    assert complete(tmp_path, "rayfleet scale ") == []
    assert complete(tmp_path, "rayfleet logs ") == []


def test_the_completion_script_is_there_to_install() -> None:
    result = rayfleet("--show-completion", "bash", timeout=60)
    assert result.returncode == 0 and "_RAYFLEET_COMPLETE=complete_bash" in result.stdout
