"""A training job as a KubeRay RayJob that runs on its fleet's RayCluster.

Only what a RayJob needs is read from the job spec (which fleet, which namespace, the submitter's
image and token Secret, the entrypoint); the whole job document travels to the entrypoint
unchanged (env RAYFLEET_JOB_SPEC, JSON), where the jobs package validates the rest.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cluster.errors import BadInput
from cluster.render.k8s import MANAGED, RAY_API
from cluster.spec import NAME_PATTERN
from cluster.spec_errors import describe_validation_error
from cluster.view import FLEET_LABEL

DEFAULT_ENTRYPOINT = "python -m jobs.entrypoint"
"""The training entrypoint of the jobs package; it reads the job from RAYFLEET_JOB_SPEC."""


class JobTarget(BaseModel):
    """The fields of a job spec a RayJob needs. Other fields belong to the jobs package."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(pattern=NAME_PATTERN, description="the job's name (the RayJob's name)")
    fleet: str = Field(pattern=NAME_PATTERN, description="the fleet (RayCluster) the job runs on")
    namespace: str = Field(default="rayfleet", pattern=NAME_PATTERN)
    image: str = Field(default="rayproject/ray:2.60.0-py311", description="image of the submitter pod")
    token_secret: str | None = Field(default=None, pattern=NAME_PATTERN,
                                     description="Secret with the fleet's Ray token; default <fleet>-ray-token")
    entrypoint: str = DEFAULT_ENTRYPOINT


def load_job_target(path: str | Path, data: dict[str, Any]) -> JobTarget:
    try:
        return JobTarget.model_validate(data)
    except ValidationError as error:
        raise BadInput(describe_validation_error(path, error, data, JobTarget)) from None


def ray_job(job: JobTarget, document: dict[str, Any]) -> dict[str, Any]:
    """The RayJob: submitted to the fleet's RayCluster, never creating or deleting a cluster."""
    secret = job.token_secret or f"{job.fleet}-ray-token"
    runtime_env = {"env_vars": {"RAYFLEET_JOB_SPEC": json.dumps(document, sort_keys=True)}}
    return {
        "apiVersion": RAY_API, "kind": "RayJob",
        "metadata": {"name": job.name, "namespace": job.namespace,
                     "labels": {**MANAGED, FLEET_LABEL: job.fleet}},
        "spec": {
            "clusterSelector": {"ray.io/cluster": job.fleet},
            "entrypoint": job.entrypoint,
            "runtimeEnvYAML": yaml.safe_dump(runtime_env, sort_keys=False),
            "submissionMode": "K8sJobMode",
            # The submitter talks to a token-protected dashboard: same Secret as the fleet's pods.
            "submitterPodTemplate": {"spec": {"restartPolicy": "Never", "containers": [{
                "name": "ray-job-submitter", "image": job.image,
                "env": [{"name": "RAY_AUTH_MODE", "value": "token"},
                        {"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": {"name": secret, "key": "token"}}}],
                "resources": {"requests": {"cpu": "200m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
            }]}},
        },
    }
