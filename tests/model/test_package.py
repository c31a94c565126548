"""The model package's shape, read from its source: plain PyTorch (torch and the standard
library, Triton only behind a guard), and one layout for every Triton kernel module."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import sys
from pathlib import Path

import pytest
import torch

import rayfleet.model
import rayfleet.model.kernels

MODEL = Path(rayfleet.model.__file__).parent
KERNELS = [name for _, name, _ in pkgutil.iter_modules(rayfleet.model.kernels.__path__) if name != "enabled"]


def imported(tree: ast.AST, guarded: bool = False) -> list[tuple[str, bool, int]]:
    """(top-level package, under an ``if`` or inside a function, line) of every absolute import."""
    found = []
    for node in ast.iter_child_nodes(tree):
        inner = guarded or isinstance(node, (ast.If, ast.FunctionDef, ast.AsyncFunctionDef))
        if isinstance(node, ast.Import):
            found += [(alias.name.split(".")[0], guarded, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module.split(".")[0], guarded, node.lineno))
        found += imported(node, inner)
    return found


@pytest.mark.parametrize("path", sorted(MODEL.rglob("*.py")), ids=lambda p: str(p.relative_to(MODEL)))
def test_model_imports_only_torch_and_the_standard_library(path: Path) -> None:
    bad = []
    for package, guarded, line in imported(ast.parse(path.read_text())):
        ok = package in sys.stdlib_module_names or package in ("torch", "rayfleet") or (package == "triton" and guarded)
        if not ok:
            bad.append(f"{path.name}:{line} imports {package}" + (" unguarded" if package == "triton" else ""))
    assert bad == []


@pytest.mark.parametrize("name", KERNELS)
def test_every_kernel_module_has_the_same_layout(name: str) -> None:
    kernel = importlib.import_module(f"rayfleet.model.kernels.{name}")
    assert isinstance(kernel.AVAILABLE, bool) and callable(kernel._register)
    assert kernel.handles(torch.zeros(2, 3, 4, 8)) is False  # CPU tensors keep the PyTorch path


def test_kernel_modules_are_found() -> None:
    assert sorted(KERNELS) == ["cross_entropy", "rope"]
