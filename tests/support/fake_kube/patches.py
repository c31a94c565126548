"""The patch formats the API server applies: JSON Patch (RFC 6902) and JSON Merge Patch (RFC 7386)."""
from __future__ import annotations

import copy
from typing import Any


class PatchFailed(Exception):
    """A `test` op did not hold or a path does not exist (the API server answers 422)."""


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386. (Strategic merge patches are applied the same way: they agree for maps and
    scalars, the only fields the provider patches that way.)"""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise PatchFailed(f"bad JSON pointer {path!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _parent(doc: Any, parts: list[str]) -> Any:
    for part in parts[:-1]:
        try:
            doc = doc[int(part)] if isinstance(doc, list) else doc[part]
        except (KeyError, IndexError, ValueError):
            raise PatchFailed(f"path /{'/'.join(parts)} does not exist") from None
    return doc


def json_patch(document: Any, ops: list[dict[str, Any]]) -> Any:
    """RFC 6902 add / remove / replace / test, applied to a copy."""
    doc = copy.deepcopy(document)
    for op in ops:
        parts = _pointer(op["path"])
        parent, last = _parent(doc, parts), parts[-1]
        kind = op["op"]
        if kind == "test":
            current = parent[int(last)] if isinstance(parent, list) else parent.get(last, PatchFailed)
            if current != op["value"]:
                raise PatchFailed(f"test of {op['path']} failed: {current!r} != {op['value']!r}")
        elif kind == "remove":
            if isinstance(parent, list):
                parent.pop(int(last))
            elif last in parent:
                del parent[last]
            else:
                raise PatchFailed(f"path {op['path']} does not exist")
        elif kind in ("add", "replace"):
            if isinstance(parent, list):
                index = len(parent) if last == "-" else int(last)
                if kind == "add":
                    parent.insert(index, copy.deepcopy(op["value"]))
                else:
                    parent[index] = copy.deepcopy(op["value"])
            else:
                if kind == "replace" and last not in parent:
                    raise PatchFailed(f"path {op['path']} does not exist")
                parent[last] = copy.deepcopy(op["value"])
        else:
            raise PatchFailed(f"unsupported op {kind!r}")
    return doc
