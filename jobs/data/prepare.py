"""Text to token shards: what `rayfleet data prepare` runs.

Each unit of input (jobs/data/text.py) becomes one shard, written under a temporary name and
renamed into place, then recorded by a sidecar (`shard-NNNNN.json`: tokens, documents, sha256,
the unit and the tokenizer's hash). The sidecar is the shard's commit: a run that is interrupted
and started again keeps every shard whose sidecar names the same unit of the same file version
and the same tokenizer, and tokenises only the rest. Units are tokenised in parallel local
processes; the manifest is written last, from the sidecars.
"""
from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from rayfleet.jobs.data.manifest import DTYPES, FILE, Manifest, Shard, dtype_for
from rayfleet.jobs.data.text import Unit, all_documents, documents, expand, units
from rayfleet.jobs.data.tokenizer import BYTES, Tokenizer, load_tokenizer, train_bpe

TOKENIZER_FILE = "tokenizer.json"
Progress = Callable[[int, int, int], None]
"""(units done, units in all, tokens written so far)."""


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.bin"


def sidecar_path(out: Path, index: int) -> Path:
    return out / shard_name(index).replace(".bin", ".json")


@functools.lru_cache(maxsize=2)
def _tokenizer(path: str | None) -> Tokenizer:
    """A worker process loads the tokenizer once for all the units it is given."""
    return load_tokenizer(path)


def tokenize_unit(unit: Unit, index: int, tokenizer_path: str | None, out: str) -> dict:
    """Tokenise one unit into shard `index` and commit it with its sidecar; the sidecar's content."""
    tokenizer = _tokenizer(tokenizer_path)
    dtype = np.dtype(dtype_for(tokenizer.vocab_size)).newbyteorder("<")
    folder = Path(out)
    path = folder / shard_name(index)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    digest = hashlib.sha256()
    count = docs = top = 0
    with open(tmp, "wb") as handle:
        for text in documents(unit):
            ids = tokenizer.encode_document(text)
            data = ids.astype(dtype).tobytes()
            handle.write(data)
            digest.update(data)
            count, docs = count + len(ids), docs + 1
            top = max(top, int(ids.max()) if len(ids) else 0)
    os.replace(tmp, path)
    record = {"name": path.name, "dtype": dtype_for(tokenizer.vocab_size), "tokens": count, "documents": docs,
              "sha256": digest.hexdigest(), "max_token": top, "unit": asdict(unit), "tokenizer_sha256": tokenizer.sha256}
    side = sidecar_path(folder, index)
    side.with_suffix(".tmp").write_text(json.dumps(record))
    side.with_suffix(".tmp").replace(side)
    return record


def done(out: Path, index: int, unit: Unit, tokenizer_sha: str) -> dict | None:
    """The sidecar of shard `index` if it commits this very unit with this tokenizer."""
    side = sidecar_path(out, index)
    try:
        record = json.loads(side.read_text())
    except (OSError, ValueError):
        return None
    shard = out / record.get("name", "")
    if (record.get("unit") != asdict(unit) or record.get("tokenizer_sha256") != tokenizer_sha
            or not shard.is_file() or shard.stat().st_size != record["tokens"] * DTYPES[record["dtype"]]):
        return None
    return record


def prepare(inputs: Sequence[str], out: Path, tokenizer: str | None = None, train_vocab: int | None = None,
            workers: int | None = None, chunk_bytes: int = 64 << 20,
            on_progress: Progress | None = None) -> Manifest:
    """Tokenise `inputs` (paths, folders, globs) into shards and a manifest under `out`."""
    files = expand(inputs)
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise FileNotFoundError(missing[0])
    if not files:
        raise FileNotFoundError(f"no input file matches {' '.join(inputs)}")
    out.mkdir(parents=True, exist_ok=True)
    if train_vocab is not None:
        tokenizer = str(out / TOKENIZER_FILE)
        # one an interrupted run trained is kept (its shards used it), unless another size is asked for
        if not Path(tokenizer).exists() or load_tokenizer(tokenizer).vocab_size != train_vocab:
            train_bpe(all_documents(files, chunk_bytes), train_vocab, Path(tokenizer))
    tok = load_tokenizer(tokenizer)
    work = [unit for path in files for unit in units(path, chunk_bytes)]
    records: dict[int, dict] = {}
    for index, unit in enumerate(work):
        record = done(out, index, unit, tok.sha256)
        if record is not None:
            records[index] = record
    todo = [i for i in range(len(work)) if i not in records]
    report = on_progress or (lambda *_: None)
    report(len(records), len(work), sum(r["tokens"] for r in records.values()))
    if todo:
        processes = max(1, min(workers or os.cpu_count() or 1, len(todo)))
        if processes == 1:
            for index in todo:
                records[index] = tokenize_unit(work[index], index, tokenizer, str(out))
                report(len(records), len(work), sum(r["tokens"] for r in records.values()))
        else:
            context = multiprocessing.get_context("spawn")  # no inherited threads or locks
            with ProcessPoolExecutor(processes, mp_context=context) as pool:
                futures = {pool.submit(tokenize_unit, work[i], i, tokenizer, str(out)): i for i in todo}
                for future in as_completed(futures):
                    records[futures[future]] = future.result()
                    report(len(records), len(work), sum(r["tokens"] for r in records.values()))
    for leftover in out.glob("shard-*.tmp*"):  # a write an interruption cut short
        leftover.unlink(missing_ok=True)
    for stale in out.glob("shard-*.bin"):  # shards of units an earlier run had and this one has not
        if int(stale.stem.split("-")[1]) >= len(work):
            stale.unlink()
            sidecar_path(out, int(stale.stem.split("-")[1])).unlink(missing_ok=True)
    ordered = [records[i] for i in range(len(work))]
    manifest = Manifest(dtype=dtype_for(tok.vocab_size), vocab_size=tok.vocab_size,
                        tokenizer=Path(tok.name).name if tok.name != BYTES else BYTES, tokenizer_sha256=tok.sha256,
                        shards=tuple(Shard(r["name"], r["tokens"], r["documents"], r["sha256"]) for r in ordered),
                        documents=sum(r["documents"] for r in ordered), eot=tok.eot,
                        max_token=max((r["max_token"] for r in ordered), default=0),
                        extra={"inputs": files})
    tmp = out / (FILE + ".tmp")
    tmp.write_text(manifest.to_json())
    tmp.replace(out / FILE)
    return manifest
