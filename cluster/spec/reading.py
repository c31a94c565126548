"""Reading spec files and turning validation failures into one clear message.

Shared by the fleet spec and the job spec so that every bad input reads the same way:
`FILE: FIELD: got VALUE: PROBLEM; FIX`.
"""
from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from rayfleet.errors import BadInput

_MISSING = object()


def load_yaml_mapping(path: str | Path, kind: str) -> dict[str, Any]:
    """Parse a YAML file that must hold one mapping; BadInput for anything else."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise BadInput(f"{path}: no such file; give the path of a {kind} (YAML)") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as error:
        raise BadInput(f"{path}: cannot read it as a {kind}: {error.__class__.__name__}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" (line {where.line + 1}, column {where.column + 1})" if where else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise BadInput(f"{path}{line}: not valid YAML: {problem}; fix the syntax") from None
    if not isinstance(data, dict):
        raise BadInput(f"{path}: a {kind} must be a YAML mapping of fields, got {type(data).__name__}")
    return data


def field_path(loc: tuple[Any, ...]) -> str:
    """('pools', 1, 'max_nodes') -> 'pools[1].max_nodes'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _value_at(data: Any, loc: tuple[Any, ...]) -> Any:
    for part in loc:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return data


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class that owns the field at loc[:-1] (for 'did you mean')."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return None
        annotation = fields[part].annotation
        current = _first_model(annotation)
        if current is None:
            return None
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _first_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _first_model(arg)
        if found is not None:
            return found
    return None


def _hint(error: dict[str, Any], root: type[BaseModel]) -> str:
    kind = error["type"]
    loc = tuple(error["loc"])
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        owner = _model_at(root, loc[:-1])
        accepted = list(owner.model_fields) if owner else []
        close = difflib.get_close_matches(str(loc[-1]), accepted, n=1)
        guess = f"did you mean {close[0]!r}? " if close else ""
        return f"unknown field; {guess}accepted: {', '.join(accepted)}" if accepted else "unknown field; remove it"
    if kind == "missing":
        return "required field is missing; add it"
    if kind == "literal_error":
        return f"accepted: {ctx.get('expected', '')}"
    if kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern"))
        if "a-z0-9" in pattern:
            return "use lower-case letters, digits and '-' (1-32 characters, starting and ending with a letter or digit)"
        return f"does not have the expected form {pattern}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        bound = ctx.get("ge", ctx.get("gt", ctx.get("le", ctx.get("lt"))))
        words = {"greater_than_equal": "at least", "greater_than": "more than",
                 "less_than_equal": "at most", "less_than": "less than"}[kind]
        return f"must be {words} {bound}"
    if kind == "too_short":
        return "must not be empty; give at least one entry"
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return error["msg"].lower()
    message = error["msg"]
    return message.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def describe_validation_error(path: str | Path, error: ValidationError, data: Any,
                              root: type[BaseModel]) -> str:
    """One message for a pydantic ValidationError: every problem on its own line."""
    lines = []
    for item in error.errors():
        loc = tuple(item["loc"])
        hint = _hint(item, root)
        value = _value_at(data, loc)
        if isinstance(value, (dict, list)) and item["type"] != "extra_forbidden":
            # a check across fields of a section: the message names its field; the section's
            # whole value is no help (and may be the whole spec)
            loc, hint = _named_field(loc, hint, data)
            value = _value_at(data, loc)
            value = _MISSING if isinstance(value, (dict, list)) else value
        got = "" if value is _MISSING or item["type"] == "extra_forbidden" else f"got {value!r}: "
        lines.append(f"{path}: {field_path(loc)}: {got}{hint}")
    return "\n".join(lines)


_LEADING_FIELD = re.compile(r"^([A-Za-z_]\w*(?:\[\d+\])?(?:\.[A-Za-z_]\w*(?:\[\d+\])?)*)(?: \([^)]*\))?:? ")


def _named_field(loc: tuple[Any, ...], message: str, data: Any) -> tuple[tuple[Any, ...], str]:
    """A cross-field message that starts with a field of the section at `loc` ("workers must be at
    least 1", "data.global_batch (6) must divide ...") -> that field's location and the rest."""
    match = _LEADING_FIELD.match(message)
    if match:
        parts: list[Any] = []
        for name, index in re.findall(r"([A-Za-z_]\w*)(?:\[(\d+)\])?", match.group(1)):
            parts += [name] + ([int(index)] if index else [])
        if _value_at(data, (*loc, *parts)) is not _MISSING:
            return (*loc, *parts), message[match.end():]
    return loc, message

