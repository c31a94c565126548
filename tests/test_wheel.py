"""The wheel a user installs: built from the repository as pip builds it, then read as pip reads it.
Dependencies are ranges a user can install beside their own CUDA torch, the extras exist, the
licence and every package of the tree are inside, and `rayfleet` is its command."""
from __future__ import annotations

import email
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out, source = tmp_path_factory.mktemp("wheel"), tmp_path_factory.mktemp("source")
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):  # the files a clone has (the build writes beside them)
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                             "-w", str(out), str(source)], capture_output=True, text=True, timeout=300, cwd=out)
    assert result.returncode == 0, result.stderr
    [built] = out.glob("rayfleet-*.whl")
    return zipfile.ZipFile(built)


def metadata(wheel: zipfile.ZipFile) -> email.message.Message:
    [name] = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    return email.message_from_bytes(wheel.read(name))


def test_runtime_dependencies_are_ranges_and_the_extras_exist(wheel: zipfile.ZipFile) -> None:
    meta = metadata(wheel)
    requires = meta.get_all("Requires-Dist") or []
    runtime = [r for r in requires if "extra ==" not in r]
    assert runtime and not [r for r in runtime if "==" in r], runtime  # no exact pins
    by_name = {r.split(";")[0].split(">")[0].split("<")[0].split("[")[0].strip(): r for r in runtime}
    assert {"ray", "torch", "pydantic", "py-spy", "kubernetes"} <= set(by_name), by_name
    assert "<2.61" in by_name["ray"]  # Ray's internals are used: held to the tested minor release
    assert set(meta.get_all("Provides-Extra") or []) >= {"gpu", "aws", "kubernetes", "test", "bench"}
    gpu = [r for r in requires if 'extra == "gpu"' in r]
    assert any(r.startswith("nvidia-ml-py") for r in gpu), gpu


def test_the_licence_every_package_and_the_command_are_inside(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), sorted(names)[:20]
    tree = {str(p.parent.relative_to(ROOT)) for top in ("cluster", "jobs", "model", "rayfleet")
            for p in (ROOT / top).rglob("__init__.py")}
    installed = {n.rsplit("/", 1)[0] for n in names if n.endswith("/__init__.py")}
    expected = {("rayfleet/" + folder if not folder.startswith("rayfleet") else folder) for folder in tree}
    assert expected <= installed, sorted(expected - installed)
    [entry] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert "rayfleet = rayfleet.cli.main:main" in wheel.read(entry).decode()
    assert not [n for n in names if n.startswith(("tests/", "bench/"))]  # the tests are not installed
    # the example specs `rayfleet demo` runs travel with the package
    examples = {p.name for p in (ROOT / "manifests" / "examples").glob("*.yaml")}
    assert {f"rayfleet/examples/{name}" for name in examples} <= names, sorted(names)


def test_what_the_dockerfile_copies_builds_the_package(tmp_path: Path) -> None:
    """The image's `pip install /opt/rayfleet[...]` sees only what the Dockerfile's COPY lines put
    there: that must be a buildable package (the example specs `rayfleet demo` runs are part of it)."""
    context = tmp_path / "opt-rayfleet"
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if not line.startswith("COPY "):
            continue
        *sources, destination = [word for word in line.split()[1:] if not word.startswith("--")]
        for source in sources:
            target = context / destination.removeprefix("/opt/rayfleet").strip("/")
            if destination.endswith("/"):
                target = target / Path(source).name
            target.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if (ROOT / source).is_dir() else shutil.copy2)(ROOT / source, target)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                             "-w", str(tmp_path / "out"), str(context)], capture_output=True, text=True, timeout=300,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    [built] = (tmp_path / "out").glob("rayfleet-*.whl")
    assert any(n.startswith("rayfleet/examples/") for n in zipfile.ZipFile(built).namelist())
