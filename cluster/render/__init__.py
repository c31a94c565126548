"""Rendering: what rayfleet asks a platform for, as plain values (dicts and text), no I/O.

`aws` builds EC2 launch templates, user-data and IAM policies; `k8s` builds KubeRay and core
Kubernetes objects. The providers launch from the same values the `rayfleet render` command
prints, so what a user reviews is what runs.
"""
