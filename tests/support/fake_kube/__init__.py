"""An in-process fake Kubernetes API server for the KubeRay provider's tests.

It is a fake because no kube-apiserver (nor kind, k3s or envtest) can be installed on the machines
these tests run on. It is a real HTTP server on 127.0.0.1 that the real `kubernetes` Python
client talks to, and it is strict where it matters:
- every written RayCluster/RayJob is validated against KubeRay's CRD openAPIV3Schema
  (../shared/schemas/kuberay), unknown fields rejected as with fieldValidation=Strict;
- every core object it stores (pods it creates from the templates, patched nodes) is validated
  against Kubernetes' own schemas (kubernetes-validate, strict);
- writes carrying a stale metadata.resourceVersion fail with 409 Conflict;
- a small KubeRay operator makes pods follow each worker group's replicas, deletes
  scaleStrategy.workersToDelete first, builds each pod's `ray start` as KubeRay does, and a
  scheduler places pods on fake nodes (node selectors, taints, GPU capacity, cordons).
It serves only the subset of the REST API the provider and the tests use.
"""
from tests.support.fake_kube.server import FakeKube

__all__ = ["FakeKube"]
