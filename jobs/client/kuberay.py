"""A training job as a KubeRay RayJob that runs on its fleet's RayCluster.

The RayJob carries the validated job spec and its run info in the runtime_env, exactly what
`rayfleet submit` sends through the Job Submission API, so the same entrypoint runs either way.
It never creates or deletes a cluster: `clusterSelector` names the fleet's RayCluster.
"""
from __future__ import annotations

from typing import Any

import yaml

from rayfleet.errors import BadInput
from rayfleet.cluster.render.k8s import MANAGED, RAY_API, settings, token_env
from rayfleet.cluster.spec.fleet import FleetSpec
from rayfleet.names import FLEET_LABEL
from rayfleet.jobs.client.spec import JobSpec
from rayfleet.jobs.client.submit import job_environment, job_metadata, run_info
from rayfleet.jobs.contract import driver_command, python_for


def ray_job(spec: JobSpec, fleet: FleetSpec, fleet_path: str) -> dict[str, Any]:
    if not fleet.capabilities.ray_job_resource:
        raise BadInput(f"{fleet_path}: provider: got {fleet.provider!r}: a RayJob runs on a kubernetes fleet")
    if not fleet.storage:
        raise BadInput(f"{fleet_path}: storage: a job on Kubernetes needs checkpoint storage every pod reaches; "
                       "set storage to a shared mount (a ReadWriteMany volume) or object-store path")
    k8s = settings(fleet)
    env = job_environment(spec, run_info(spec, fleet, fleet.storage, None))
    return {
        "apiVersion": RAY_API, "kind": "RayJob",
        "metadata": {"name": spec.name, "namespace": k8s.namespace, "labels": {**MANAGED, FLEET_LABEL: fleet.name}},
        "spec": {
            "clusterSelector": {"ray.io/cluster": fleet.name},
            "entrypoint": driver_command(python_for(fleet.capabilities)),
            "entrypointNumCpus": 0,
            "metadata": job_metadata(spec),
            "runtimeEnvYAML": yaml.safe_dump({"env_vars": env}, sort_keys=False),
            "submissionMode": "K8sJobMode",
            # The submitter talks to a token-protected dashboard: the same Secret as the fleet's pods.
            "submitterPodTemplate": {"spec": {"restartPolicy": "Never", "containers": [{
                "name": "ray-job-submitter", "image": k8s.image, "env": token_env(fleet),
                "resources": {"requests": {"cpu": "200m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
            }]}},
        },
    }
