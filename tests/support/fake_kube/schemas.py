"""Schema validation as the API server does it: KubeRay's CRDs and Kubernetes' core schemas."""
from __future__ import annotations

import copy
import functools
import os
import re
from pathlib import Path
from typing import Any, Iterable

import jsonschema
import kubernetes_validate
import yaml

KUBERNETES_VERSION = "1.33"
KUBERAY_SCHEMAS = Path(os.environ.get(
    "RAYFLEET_KUBERAY_SCHEMAS", Path(__file__).resolve().parents[3].parent / "shared" / "schemas" / "kuberay"))
CRD_FILES = {"rayclusters": "ray.io_rayclusters.yaml", "rayjobs": "ray.io_rayjobs.yaml"}

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


class Invalid(Exception):
    """The object does not validate; `str()` lists the problems (field path: message)."""


def _strict(schema: Any) -> Any:
    """An OpenAPI schema where objects with declared properties reject unknown ones, as the API
    server does with fieldValidation=Strict (its default drops them silently: a typo would vanish)."""
    if isinstance(schema, dict):
        out = {key: _strict(value) for key, value in schema.items()}
        if ("properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


@functools.cache
def crd_validator(plural: str, version: str = "v1") -> jsonschema.Draft7Validator:
    text = (KUBERAY_SCHEMAS / CRD_FILES[plural]).read_text()
    crd = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    [served] = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema = _strict(copy.deepcopy(served["schema"]["openAPIV3Schema"]))
    return jsonschema.Draft7Validator(schema)


def _errors(found: Iterable[jsonschema.ValidationError]) -> list[str]:
    return [f"{'.'.join(str(p) for p in error.absolute_path) or '(root)'}: {error.message}"
            for error in sorted(found, key=lambda e: list(map(str, e.absolute_path)))[:10]]


def check_metadata(obj: dict[str, Any], cluster_scoped: bool = False) -> list[str]:
    meta = obj.get("metadata") or {}
    problems = []
    name = str(meta.get("name", ""))
    if not DNS_LABEL.match(name):
        problems.append(f"metadata.name: {name!r} is not a DNS-1123 label")
    if not cluster_scoped and not meta.get("namespace"):
        problems.append("metadata.namespace: required")
    for key, value in (meta.get("labels") or {}).items():
        if not LABEL_KEY.match(key) or not LABEL_VALUE.match(str(value)):
            problems.append(f"metadata.labels: {key}={value!r} is not a valid label")
    return problems


def validate_custom(plural: str, obj: dict[str, Any]) -> None:
    problems = check_metadata(obj) + _errors(crd_validator(plural).iter_errors(obj))
    problems += core_problems({"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj.get("metadata", {})})
    if problems:
        raise Invalid("; ".join(problems))


def core_problems(obj: dict[str, Any]) -> list[str]:
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except jsonschema.ValidationError as error:
        return [f"{'.'.join(str(p) for p in error.absolute_path) or '(root)'}: {error.message}"]
    return []


def validate_core(obj: dict[str, Any], cluster_scoped: bool = False) -> None:
    problems = check_metadata(obj, cluster_scoped) + core_problems(obj)
    if problems:
        raise Invalid(f"{obj.get('kind')} {obj.get('metadata', {}).get('name')}: " + "; ".join(problems))
