"""The package's shape, read from its source: which part may import which, and no import cycles.

The parts of `rayfleet` (ARCHITECTURE.md): `model` imports neither `jobs` nor `cluster`; `cluster`
imports neither `jobs` nor `model`, and not torch at module level (a controller starts in a
second on a CPU head); `jobs` imports `model` and only cluster's public surface; the CLI is the
one layer that imports every part. The root modules (`rayfleet.names`, `rayfleet.errors`) are
leaves any part may import. Imports inside functions count as edges too: they are still
dependencies, only deferred.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import ROOT

PARTS = {"rayfleet": ROOT / "rayfleet", "rayfleet.cluster": ROOT / "cluster", "rayfleet.jobs": ROOT / "jobs",
         "rayfleet.model": ROOT / "model", "rayfleet.examples": ROOT / "manifests" / "examples"}
ROOT_LEAVES = {"rayfleet", "rayfleet.names", "rayfleet.errors"}
CLUSTER_PUBLIC = (
    # What jobs may use of cluster: the fleet's spec and its errors, how to reach the GCS and the
    # fleet, the events and loop-step protocol a job step plugs in with, the Kubernetes
    # rendering a RayJob shares with its RayCluster, and the rank's side of what a node's agent
    # reads of it when a job hangs (step counters, flight recorder).
    "rayfleet.cluster.spec.", "rayfleet.cluster.rayio.gcs", "rayfleet.cluster.rayio.connection",
    "rayfleet.cluster.decide.events", "rayfleet.cluster.decide.view", "rayfleet.cluster.loop.steps",
    "rayfleet.cluster.head.supervisor", "rayfleet.cluster.render.k8s", "rayfleet.cluster.health.stepmarks",
    "rayfleet.cluster.health.flight_recorder",
)


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    top_level: bool   # at module level (not inside a function)
    line: int


def modules() -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    found = {}
    for prefix, folder in PARTS.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            found[".".join([prefix, *parts])] = path
    return found


def imports(name: str, source: str, known: set[str], is_package: bool) -> list[Edge]:
    """The imports of one module that land in the package (module-level and deferred)."""
    edges: list[Edge] = []

    def resolve(module: str | None, level: int) -> str:
        if not level:
            return module or ""
        base = name.split(".") if is_package else name.split(".")[:-1]
        base = base[:len(base) - (level - 1)]
        return ".".join(base + ([module] if module else []))

    def visit(node: ast.AST, depth: int) -> None:
        for child in ast.iter_child_nodes(node):
            inner = depth + isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    edges.append(Edge(name, alias.name, depth == 0, child.lineno))
            elif isinstance(child, ast.ImportFrom):
                module = resolve(child.module, child.level)
                for alias in child.names:
                    full = f"{module}.{alias.name}"
                    edges.append(Edge(name, full if full in known else module, depth == 0, child.lineno))
            visit(child, inner)

    visit(ast.parse(source), 0)
    return edges


def graph(sources: dict[str, tuple[str, bool]]) -> list[Edge]:
    known = set(sources)
    return [edge for name, (source, is_package) in sources.items()
            for edge in imports(name, source, known, is_package)]


def part_of(module: str) -> str:
    """cluster, jobs, model, cli, or root (rayfleet's own leaves); '' outside the package."""
    if module == "rayfleet" or module in ROOT_LEAVES:
        return "root"
    match = re.match(r"rayfleet\.(cluster|jobs|model|cli)(\.|$)", module)
    return match.group(1) if match else ""


def violations(edges: list[Edge]) -> list[str]:
    """Every edge the design forbids, as `source:line -> target (why)`."""
    bad = []
    for edge in edges:
        src, dst = part_of(edge.source), part_of(edge.target)
        where = f"{edge.source}:{edge.line} -> {edge.target}"
        if src == "model" and dst not in ("model", ""):
            bad.append(f"{where} (model imports only torch)")
        elif src == "cluster" and dst in ("jobs", "model", "cli"):
            bad.append(f"{where} (cluster never imports {dst})")
        elif src == "cluster" and edge.top_level and edge.target.split(".")[0] == "torch":
            bad.append(f"{where} (cluster imports torch only inside the check that needs it)")
        elif src == "jobs" and dst == "cli":
            bad.append(f"{where} (only the CLI imports the CLI)")
        elif src == "jobs" and dst == "cluster" and not edge.target.startswith(CLUSTER_PUBLIC) \
                and edge.target != "rayfleet.cluster":
            bad.append(f"{where} (jobs may use only cluster's public surface: CLUSTER_PUBLIC)")
        elif src == "root" and dst not in ("root", ""):
            bad.append(f"{where} (rayfleet's root modules are leaves)")
    return bad


def cycles(edges: list[Edge], names: set[str]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each sorted."""
    succ: dict[str, set[str]] = {name: set() for name in names}
    for edge in edges:
        if edge.target in names and edge.target != edge.source and not edge.source.startswith(edge.target + "."):
            succ[edge.source].add(edge.target)  # a package's own __init__ is imported on the way in
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in succ[node]:
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for name in sorted(names):
        if name not in index:
            connect(name)
    return found


def package_graph() -> tuple[list[Edge], set[str]]:
    mods = modules()
    sources = {name: (path.read_text(), path.name == "__init__.py") for name, path in mods.items()}
    return graph(sources), set(mods)


def test_no_part_imports_what_the_design_forbids() -> None:
    edges, _ = package_graph()
    assert violations(edges) == []


def test_no_module_import_cycles() -> None:
    edges, names = package_graph()
    assert cycles(edges, names) == []


def test_the_checks_catch_a_forbidden_import_and_a_cycle() -> None:
    sources = {
        "rayfleet.cluster.decide.plan": ("from rayfleet.jobs.worker import loop\nimport torch\n", False),
        "rayfleet.jobs.worker.loop": ("def f():\n    from rayfleet.cluster.loop.controller import x\n", False),
        "rayfleet.model.moe": ("from rayfleet.names import NAMESPACE\n", False),
        "rayfleet.model.a": ("from . import b\n", False),
        "rayfleet.model.b": ("def f():\n    from .a import g\n", False),
        "rayfleet.cluster.loop.controller": ("", False),
    }
    edges = graph(sources)
    assert violations(edges) == [
        "rayfleet.cluster.decide.plan:1 -> rayfleet.jobs.worker.loop (cluster never imports jobs)",
        "rayfleet.cluster.decide.plan:2 -> torch (cluster imports torch only inside the check that needs it)",
        "rayfleet.jobs.worker.loop:2 -> rayfleet.cluster.loop.controller (jobs may use only cluster's public "
        "surface: CLUSTER_PUBLIC)",
        "rayfleet.model.moe:1 -> rayfleet.names (model imports only torch)",
    ]
    assert cycles(edges, set(sources)) == [["rayfleet.model.a", "rayfleet.model.b"]]


def test_pyproject_lists_every_package_folder() -> None:
    """A package folder missing from pyproject's list would be absent from the wheel, and only an
    installed user would notice."""
    block = re.search(r"^packages = \[(.*?)\]", (ROOT / "pyproject.toml").read_text(), re.S | re.M)
    assert block, "pyproject.toml lists the packages under [tool.setuptools] packages"
    listed = set(re.findall(r'"([\w.]+)"', block.group(1)))
    folders = {name for name, path in modules().items() if path.name == "__init__.py"}
    assert listed == folders


PROVIDER_NAMES = {"local", "aws", "kubernetes"}
MAY_NAME_PROVIDERS = ("rayfleet.cluster.providers", "rayfleet.cluster.spec")


def provider_branches(name: str, source: str) -> list[str]:
    """`x.provider == "local"` and the like: a caller deciding by a provider's name."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare):
            continue
        sides = [node.left, *node.comparators]
        names = [s.value for s in sides if isinstance(s, ast.Constant) and s.value in PROVIDER_NAMES]
        asks = any(isinstance(s, ast.Attribute) and s.attr == "provider" for s in sides)
        if names and asks:
            found.append(f"{name}:{node.lineno} compares provider with {names[0]!r}")
    return found


def test_only_providers_and_the_spec_name_providers() -> None:
    """Everything else asks `spec.capabilities` (cluster/spec/capabilities.py): a new provider is
    one entry there and one module in providers/, not an edit in every caller."""
    found = [hit for name, path in modules().items() if not name.startswith(MAY_NAME_PROVIDERS)
             for hit in provider_branches(name, path.read_text())]
    assert found == []
    assert provider_branches("rayfleet.cli.commands.chaos", 'if spec.provider != "local":\n    pass\n') == [
        "rayfleet.cli.commands.chaos:1 compares provider with 'local'"]


def test_every_provider_kind_declares_its_capabilities() -> None:
    from typing import get_args

    from rayfleet.cluster.spec.capabilities import CAPABILITIES, ProviderKind

    assert set(CAPABILITIES) == set(get_args(ProviderKind)) == PROVIDER_NAMES

