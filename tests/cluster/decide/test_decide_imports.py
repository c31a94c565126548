"""cluster/decide is pure decisions: no module of it does I/O, reads a clock or draws a random
number, none imports Ray or torch (not even through what it imports), and its modules import
one another without cycles."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

DECIDE = Path(__file__).resolve().parents[3] / "cluster" / "decide"
PACKAGE = "rayfleet.cluster.decide"
# The edge's modules: I/O, clocks, randomness, processes, and the runtimes.
FORBIDDEN = {"ray", "torch", "time", "datetime", "random", "os", "socket", "subprocess", "threading", "asyncio",
             "shutil", "pathlib", "io", "urllib", "http", "requests", "boto3", "kubernetes", "grpc", "psutil"}
FORBIDDEN_CALLS = {"open", "print", "input"}


def sources() -> dict[str, ast.Module]:
    return {path.stem: ast.parse(path.read_text(), str(path)) for path in sorted(DECIDE.glob("*.py"))}


def imported(tree: ast.Module) -> list[tuple[str, int]]:
    """Every name an import statement brings in (at any depth), dotted from its module, with its line."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out += [(f"{node.module}.{alias.name}", node.lineno) for alias in node.names]
    return out


def test_no_module_imports_the_edge() -> None:
    bad = [f"{name}.py:{line} imports {module}" for name, tree in sources().items()
           for module, line in imported(tree) if module.split(".")[0] in FORBIDDEN]
    assert bad == []


def test_no_module_opens_files_or_prints() -> None:
    bad = [f"{name}.py:{node.lineno} calls {node.func.id}" for name, tree in sources().items()
           for node in ast.walk(tree)
           if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FORBIDDEN_CALLS]
    assert bad == []


def test_importing_every_module_loads_neither_ray_nor_torch() -> None:
    names = [f"{PACKAGE}.{name}" for name in sources() if name != "__init__"]
    code = ("import importlib, sys\n"
            f"for name in {names!r}: importlib.import_module(name)\n"
            "print(sorted(m for m in ('ray', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_modules_import_one_another_without_cycles() -> None:
    edges = {name: {module[len(PACKAGE) + 1:].split(".")[0] for module, _ in imported(tree)
                    if module.startswith(PACKAGE + ".")}
             for name, tree in sources().items()}
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(name):] + [name]))
        if name in done:
            return
        for target in sorted(edges.get(name, ())):
            visit(target, path + [name])
        done.add(name)

    for name in edges:
        visit(name, [])
