"""The parts of jobs/ import one another in one direction: read from their source, function-level
imports included, so that a cycle cannot hide inside a function."""
from __future__ import annotations

import ast
from pathlib import Path

import rayfleet.jobs

ROOT = Path(rayfleet.jobs.__file__).parent
PACKAGE = "rayfleet.jobs"


def modules() -> dict[str, Path]:
    """Module name -> file, for every module of jobs/ (packages' __init__ files aside)."""
    return {".".join((PACKAGE, *path.relative_to(ROOT).with_suffix("").parts)): path
            for path in sorted(ROOT.rglob("*.py")) if path.name != "__init__.py"}


def imports(path: Path, known: set[str]) -> set[str]:
    """The modules of jobs/ that the module at `path` imports anywhere in its body."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out |= {f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                    for alias in node.names}
    return out & known


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(path, set(found)) - {name} for name, path in found.items()}


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the modules along it, or None."""
    done: set[str] = set()

    def visit(name: str, trail: list[str]) -> list[str] | None:
        if name in trail:
            return trail[trail.index(name):] + [name]
        if name in done:
            return None
        for target in sorted(edges[name]):
            found = visit(target, [*trail, name])
            if found:
                return found
        done.add(name)
        return None

    return next((found for name in sorted(edges) if (found := visit(name, []))), None)


def test_no_module_of_jobs_imports_itself_back() -> None:
    assert cycle(graph()) is None


def test_every_runtime_can_import_the_contract_which_imports_none_of_them() -> None:
    edges = graph()
    assert edges[f"{PACKAGE}.contract"] == set()


def test_the_workers_never_import_the_drivers_code() -> None:
    edges = graph()
    wrong = {name: targets for name, targets in edges.items() if name.startswith(f"{PACKAGE}.worker.")
             and any(target.startswith(f"{PACKAGE}.driver.") for target in targets)}
    assert wrong == {}


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text(f"import {PACKAGE}.b\n")
    (tmp_path / "b.py").write_text(f"def f():\n    from {PACKAGE} import a\n")
    known = {f"{PACKAGE}.a", f"{PACKAGE}.b"}
    edges = {f"{PACKAGE}.{name}": imports(tmp_path / f"{name}.py", known) for name in "ab"}
    assert cycle(edges) == [f"{PACKAGE}.a", f"{PACKAGE}.b", f"{PACKAGE}.a"]
