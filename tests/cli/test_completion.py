"""Shell completion of pool, job and fleet names, through the script's real completion entry
(what `rayfleet --install-completion` wires into bash)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import RAYFLEET, rayfleet, rayfleet_env
from tests.support.fleet_folder import fleet_folder


@pytest.fixture
def home(tmp_path: Path) -> Path:
    fleet_folder(tmp_path, "demo", spec="pools:\n  - name: h100\n  - name: a100\n", jobs=("moe-demo", "ddp-run"))
    (tmp_path / "fleets" / "other").mkdir()
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


def test_the_named_shells_script_completes_pools_in_a_real_bash_started_from_sh(home: Path) -> None:
    """`rayfleet completion bash` as a Dockerfile RUN line calls it (under /bin/sh, where typer's
    `--show-completion` says "Shell sh not supported"), then sourced by bash and used."""
    script = subprocess.run(["sh", "-c", f"{RAYFLEET} completion bash"], capture_output=True, text=True, timeout=60,
                            env=rayfleet_env(home))
    assert script.returncode == 0, script.stderr
    used = subprocess.run(["bash", "-c", 'eval "$SCRIPT"; COMP_WORDS=(rayfleet scale a); COMP_CWORD=2; '
                                         f'_rayfleet_completion {RAYFLEET}; echo "${{COMPREPLY[@]}}"'],
                          capture_output=True, text=True, timeout=60, env={**rayfleet_env(home), "SCRIPT": script.stdout})
    assert used.returncode == 0 and used.stdout.split() == ["a100"], used.stdout + used.stderr
    for shell in ("zsh", "fish", "powershell"):
        assert "_RAYFLEET_COMPLETE" in rayfleet("completion", shell, timeout=60).stdout


def test_an_unknown_shell_is_bad_input_naming_the_choices() -> None:
    result = rayfleet("completion", "ksh", timeout=60)
    message = " ".join(result.stderr.replace("│", " ").split())  # rich wraps it in a box
    assert result.returncode == 2 and "'ksh' is not one of 'bash', 'zsh', 'fish'" in message, result.stderr
