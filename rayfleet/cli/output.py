"""Printing for the CLI: tables for people, JSON or YAML for programs. Only the CLI prints."""
from __future__ import annotations

import json
import sys
from enum import Enum
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console(highlight=False, soft_wrap=True)
errors = Console(stderr=True, highlight=False, soft_wrap=True)


class Format(str, Enum):
    table = "table"
    json = "json"
    yaml = "yaml"


def emit(data: Any, fmt: Format) -> bool:
    """Print data as JSON or YAML and return True; False means the caller prints a table."""
    if fmt is Format.json:
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
        return True
    if fmt is Format.yaml:
        import yaml

        sys.stdout.write(yaml.safe_dump(json.loads(json.dumps(data, default=str)), sort_keys=False))
        return True
    return False


def short_instance(instance: str | None, fleet: str) -> str:
    """An instance id without its fleet's name (`local-demo-h100-0001` -> `h100-0001`) for tables:
    every row of a table is of one fleet, and 80 columns are few."""
    if not instance:
        return "-"
    return instance[len(fleet) + 1:] if instance.startswith(f"{fleet}-") else instance


def age(seconds: float) -> str:
    """45s, 12m05s, 3h07m, 2d04h."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def table(*columns: str | tuple[str, dict[str, Any]]) -> Table:
    """A borderless table that reads at 80 columns: one space between columns, no edge padding.
    A column is a header, or (header, options for Table.add_column)."""
    out = Table(box=None, header_style="bold", pad_edge=False, collapse_padding=True)
    for column in columns:
        header, options = (column, {}) if isinstance(column, str) else column
        out.add_column(header, **options)
    return out


def count(value: float) -> str:
    """950, 12.3k, 4.56M: a rate in five characters."""
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            scaled = value / limit
            return f"{scaled:.3g}{suffix}" if scaled < 100 else f"{scaled:.0f}{suffix}"
    return f"{value:.0f}"
