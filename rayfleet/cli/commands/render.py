"""`rayfleet render k8s|aws -f FILE [-o DIR]`: the manifests a fleet (or job) runs from.

k8s: a fleet spec becomes a KubeRay RayCluster with its RBAC, PriorityClasses, PodDisruptionBudgets
and spec ConfigMap; a job spec becomes a RayJob. aws: EC2 launch templates (head and pools),
placement groups, least-privilege IAM policies and the workers' user-data, as JSON.
Without -o the result goes to stdout; with -o DIR one file per part (and a kustomization.yaml).
A spec of cells renders each cell as the one Ray cluster it is, named `<fleet>-<cell>`, where it
runs (its Kubernetes context and namespace, or its AWS region and subnets): with -o DIR, in the
folder DIR/<fleet>-<cell> (cluster/render/cells.py).
"""
from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from rayfleet.cli.app import app
from rayfleet.cli.output import console
from rayfleet.errors import BadInput
from rayfleet.cluster.spec.cells import fleet_cells
from rayfleet.cluster.spec.fleet import FleetSpec, load_fleet_spec
from rayfleet.cluster.spec.reading import load_yaml_mapping


class Target(str, Enum):
    k8s = "k8s"
    aws = "aws"


@app.command()
def render(
    target: Target = typer.Argument(..., help="k8s (KubeRay manifests) or aws (EC2 templates and IAM)"),
    file: Path = typer.Option(..., "-f", "--file", help="fleet spec (YAML); for k8s also a job spec"),
    fleet_file: Optional[Path] = typer.Option(None, "--fleet-file", help="with a job spec: the fleet it runs on"),
    output: Optional[Path] = typer.Option(None, "-o", "--output-dir", help="write files here instead of stdout"),
) -> None:
    """Print (or write) what the fleet runs from on Kubernetes or AWS. Contains no secret."""
    data = load_yaml_mapping(file, kind="fleet or job spec")
    if target is Target.k8s and "pools" not in data:
        _emit_job(file, fleet_file, output)
        return
    spec = _fleet(file, target)
    if len(fleet_cells(spec)) > 1:
        _emit_cells(spec, target, output)
        return
    if target is Target.k8s:
        from rayfleet.cluster.render.k8s import as_files, operator_files, prerequisites, render_fleet, to_yaml

        objects = render_fleet(spec)
        _emit({**as_files(objects), **operator_files()}, to_yaml(objects), output)
        if output is not None:
            console.print("before `kubectl apply -k " + str(output) + "`:\n" + "\n".join(
                f"  {n}. {step.replace('DIR', str(output))}" for n, step in enumerate(prerequisites(spec), 1)))
    else:
        from rayfleet.cluster.render import aws

        document = aws.render_aws(spec)
        _emit(aws.as_files(document), json.dumps(document, indent=2) + "\n", output)


def _emit_cells(spec: FleetSpec, target: Target, output: Path | None) -> None:
    """Each cell of the spec, rendered as one fleet is, in its own folder under `output`."""
    from rayfleet.cluster.render import cells

    if target is Target.aws:
        document = cells.aws_cells_document(spec)
        _emit(cells.aws_cells_files(document), json.dumps(document, indent=2) + "\n", output)
        return
    from rayfleet.cluster.render.k8s import prerequisites

    _emit(cells.k8s_cells_files(spec), cells.k8s_cells_yaml(spec), output)
    if output is None:
        return
    for cell, _ in cells.k8s_cell_objects(spec):
        console.print(f"cell {cell.name} ({cells.where(cell)}): `{cells.apply_command(cell, str(output))}`, after:")
        for n, step in enumerate(prerequisites(cell.spec), 1):
            console.print(f"  {n}. {step.replace('DIR', str(output))}")


def _emit_job(file: Path, fleet_file: Path | None, output: Path | None) -> None:
    """A job spec and the fleet it runs on -> a RayJob."""
    from rayfleet.cluster.render.k8s import as_files, to_yaml
    from rayfleet.jobs.client.kuberay import ray_job
    from rayfleet.jobs.client.spec import check_against_fleet, load_job_spec, validate_model

    spec = load_job_spec(file)
    if fleet_file is None:
        raise BadInput(f"{file}: a job spec renders as a RayJob on a fleet; add --fleet-file FLEET.yaml")
    fleet = load_fleet_spec(fleet_file)
    cells = fleet_cells(fleet)
    if len(cells) > 1:
        raise BadInput(f"{fleet_file}: cells: the fleet is {len(cells)} cells ({', '.join(c.spec.name for c in cells)}), "
                       "each its own RayCluster; a RayJob runs on one: `rayfleet submit` places the job on a cell "
                       "of a running fleet of cells")
    check_against_fleet(spec, fleet, file)
    validate_model(spec, file)
    objects = [ray_job(spec, fleet, str(fleet_file))]
    _emit(as_files(objects), to_yaml(objects), output)


def _fleet(file: Path, target: Target) -> FleetSpec:
    spec = load_fleet_spec(file)
    wanted = "kubernetes" if target is Target.k8s else "aws"
    if spec.provider != wanted:
        raise BadInput(f"{file}: provider: got {spec.provider!r}: `rayfleet render {target.value}` renders "
                       f"fleets with provider: {wanted}; set it (and the {wanted} blocks) in the spec")
    return spec


def _emit(files: dict[str, str], text: str, output: Path | None) -> None:
    if output is None:
        typer.echo(text, nl=False)
        return
    for name, content in files.items():
        path = output / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    console.print(f"wrote {len(files)} files to {output}: {', '.join(sorted(files))}")
