"""Documents from text files: plain text (a file is one document), JSONL (each line's `text`),
Parquet (each row's `text` column, through pyarrow). Big files are cut into units (byte ranges
ending at a line break; a Parquet row group) so that tokenising them runs in parallel and an
interrupted run keeps the units it finished."""
from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

TEXT_FIELD = "text"


@dataclass(frozen=True)
class Unit:
    """One piece of input: bytes [start, stop) of a text/JSONL file, or row group `start` of a
    Parquet file (stop = start + 1). `size` and `mtime` identify the file's version."""

    path: str
    start: int
    stop: int
    size: int
    mtime: float

    @property
    def kind(self) -> str:
        return kind_of(self.path)


def kind_of(path: str) -> str:
    name = path.lower()
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    return "text"


def expand(patterns: Sequence[str]) -> list[str]:
    """Files named by paths, folders (every file below) and globs, sorted, each once."""
    found: list[str] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            found += [str(p) for p in sorted(path.rglob("*")) if p.is_file()]
        elif any(ch in pattern for ch in "*?["):
            found += sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
        else:
            found.append(pattern)
    return list(dict.fromkeys(found))


def units(path: str, chunk_bytes: int) -> list[Unit]:
    """The units of one file."""
    stat = os.stat(path)
    if kind_of(path) == "parquet":
        import pyarrow.parquet as pq

        groups = pq.ParquetFile(path).num_row_groups
        return [Unit(path, g, g + 1, stat.st_size, stat.st_mtime) for g in range(groups)]
    cuts = [0]
    with open(path, "rb") as handle:
        while cuts[-1] + chunk_bytes < stat.st_size:
            handle.seek(cuts[-1] + chunk_bytes)
            handle.readline()  # end the unit at a line break
            cuts.append(min(handle.tell(), stat.st_size))
    if cuts[-1] < stat.st_size or stat.st_size == 0:
        cuts.append(stat.st_size)
    return [Unit(path, a, b, stat.st_size, stat.st_mtime) for a, b in zip(cuts, cuts[1:])]


def documents(unit: Unit) -> Iterator[str]:
    """The documents of a unit (a plain-text file cut into several units is one document per
    unit: its pieces end at line breaks)."""
    if unit.kind == "parquet":
        import pyarrow.parquet as pq

        table = pq.ParquetFile(unit.path).read_row_group(unit.start, columns=[TEXT_FIELD])
        for value in table.column(TEXT_FIELD).to_pylist():
            if value:
                yield value
        return
    with open(unit.path, "rb") as handle:
        handle.seek(unit.start)
        data = handle.read(unit.stop - unit.start).decode("utf-8", errors="replace")
    if unit.kind == "text":
        if data:
            yield data
        return
    for number, line in enumerate(data.splitlines()):
        if line.strip():
            doc = json.loads(line)
            text = doc.get(TEXT_FIELD) if isinstance(doc, dict) else None
            if not isinstance(text, str):
                raise ValueError(f"{unit.path}: a line (bytes from {unit.start}, line {number + 1} of the "
                                 f"unit) has no string field {TEXT_FIELD!r}")
            if text:
                yield text


def all_documents(paths: Sequence[str], chunk_bytes: int = 1 << 26) -> Iterator[str]:
    for path in paths:
        for unit in units(path, chunk_bytes):
            yield from documents(unit)
