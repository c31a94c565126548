"""Runs in the CLI's process: the job spec, submitting and stopping jobs through Ray's Job API, and
KubeRay manifests. The controller resubmits through submit.py too, and every runtime parses the
spec it is handed with spec.py's models."""
