"""`rayfleet render k8s|aws -f FILE [-o DIR]`: the manifests a fleet (or job) runs from.

k8s: a fleet spec becomes a KubeRay RayCluster with its RBAC, PriorityClasses, PodDisruptionBudgets
and spec ConfigMap; a job spec becomes a RayJob. aws: EC2 launch templates (head and pools),
placement groups, least-privilege IAM policies and the workers' user-data, as JSON.
Without -o the result goes to stdout; with -o DIR one file per part (and a kustomization.yaml).
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
from rayfleet.cluster.spec.cells import require_one_cell
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


def _emit_job(file: Path, fleet_file: Path | None, output: Path | None) -> None:
    """A job spec and the fleet it runs on -> a RayJob."""
    from rayfleet.cluster.render.k8s import as_files, to_yaml
    from rayfleet.jobs.client.kuberay import ray_job
    from rayfleet.jobs.client.spec import check_against_fleet, load_job_spec, validate_model

    spec = load_job_spec(file)
    if fleet_file is None:
        raise BadInput(f"{file}: a job spec renders as a RayJob on a fleet; add --fleet-file FLEET.yaml")
    fleet = load_fleet_spec(fleet_file)
    check_against_fleet(spec, fleet, file)
    validate_model(spec, file)
    objects = [ray_job(spec, fleet, str(fleet_file))]
    _emit(as_files(objects), to_yaml(objects), output)


def _fleet(file: Path, target: Target) -> FleetSpec:
    spec = load_fleet_spec(file)
    require_one_cell(spec, file, f"render {target.value}")
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
