"""Printing for the CLI: tables for people, JSON or YAML for programs. Only the CLI prints."""
from __future__ import annotations

import json
import sys
from enum import Enum
from typing import Any

from rich.console import Console

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
