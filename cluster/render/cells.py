"""A fleet of cells rendered: each cell is one Ray cluster, rendered exactly as a one-cell fleet is.

`fleet_cells` (cluster/spec/cells.py) gives each cell a complete FleetSpec named `<fleet>-<cell>`,
with the cell's Kubernetes context and namespace, or its AWS region and subnets, in place of the
fleet's; each is rendered by the one-cluster renderers (k8s.py, aws.py) unchanged. The files
of cell `<fleet>-<cell>` go in a folder of that name, so each cell is applied on its own, where
it runs (`kubectl --context CONTEXT apply -k DIR/<fleet>-<cell>`): cells in different
Kubernetes clusters or AWS regions share nothing that one apply could create. Pure.
"""
from __future__ import annotations

import json
from typing import Any

from rayfleet.cluster.render import aws, k8s
from rayfleet.cluster.spec.cells import Cell, fleet_cells
from rayfleet.cluster.spec.fleet import FleetSpec


# --- Kubernetes -----------------------------------------------------------------------------------
def k8s_cell_objects(spec: FleetSpec) -> list[tuple[Cell, list[dict[str, Any]]]]:
    """Each cell and its objects (shared RBAC and priorities, then its RayCluster and what it needs),
    in its own namespace."""
    return [(cell, k8s.render_fleet(cell.spec)) for cell in fleet_cells(spec)]


def where(cell: Cell) -> str:
    """`context X, namespace Y` of a Kubernetes cell (the current context when it names none)."""
    settings = k8s.settings(cell.spec)
    context = settings.context or "the current context"
    return f"context {context}, namespace {settings.namespace}"


def k8s_cells_yaml(spec: FleetSpec) -> str:
    """One YAML stream: each cell's objects after a comment naming the cell and where it runs."""
    parts = []
    for cell, objects in k8s_cell_objects(spec):
        parts.append(f"# cell {cell.name}: RayCluster {cell.spec.name} in {where(cell)}\n" + k8s.to_yaml(objects))
    return "---\n".join(parts)


def k8s_cells_files(spec: FleetSpec) -> dict[str, str]:
    """`<fleet>-<cell>/` per cell (its files and kustomization.yaml), and KubeRay's operator once."""
    files = dict(k8s.operator_files())
    for cell, objects in k8s_cell_objects(spec):
        files.update({f"{cell.spec.name}/{name}": text for name, text in k8s.as_files(objects).items()})
    return files


def apply_command(cell: Cell, folder: str) -> str:
    context = k8s.settings(cell.spec).context
    return f"kubectl{f' --context {context}' if context else ''} apply -k {folder}/{cell.spec.name}"


# --- AWS ------------------------------------------------------------------------------------------
def aws_cells_document(spec: FleetSpec) -> dict[str, Any]:
    """The fleet's cells, each with what `rayfleet render aws` gives one fleet (its region, launch
    templates on its subnets, placement groups, IAM policies scoped to the cell's fleet name)."""
    return {"fleet": spec.name, "cells": [{"cell": cell.name, **aws.render_aws(cell.spec)} for cell in fleet_cells(spec)]}


def aws_cells_files(document: dict[str, Any]) -> dict[str, str]:
    """`aws.json` (the whole document) and `<fleet>-<cell>/` per cell, as one fleet's `-o DIR` is."""
    files = {"aws.json": json.dumps(document, indent=2) + "\n"}
    for cell in document["cells"]:
        one = {key: value for key, value in cell.items() if key != "cell"}
        files.update({f"{cell['fleet']}/{name}": text for name, text in aws.as_files(one).items()})
    return files
