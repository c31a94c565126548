"""`rayfleet data prepare`: text, JSONL and Parquet to shards; resumable; a trained tokenizer."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rayfleet.jobs.data.prepare import prepare
from rayfleet.jobs.data.shards import TokenShards
from rayfleet.jobs.data.tokenizer import load_tokenizer
from tests.conftest import rayfleet


def inputs(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.txt").write_text("plain text, one document\n" * 50)
    (folder / "b.jsonl").write_text("\n".join(json.dumps({"text": f"doc {i} " * 20}) for i in range(40)))
    pq.write_table(pa.table({"text": [f"row {i} of parquet" for i in range(30)]}), folder / "c.parquet",
                   row_group_size=10)
    return folder


def test_bytes_shards_hold_every_document_in_order(tmp_path: Path) -> None:
    folder = inputs(tmp_path)
    manifest = prepare([str(folder)], tmp_path / "out", workers=1, chunk_bytes=256)
    # a.txt (1,300 bytes) is cut into 5 units at line breaks, each a document
    assert manifest.vocab_size == 256 and manifest.documents == 5 + 40 + 30 and manifest.tokenizer == "bytes"
    assert len(manifest.shards) > 5  # a.txt and b.jsonl cut into units, c.parquet by row group
    shards = TokenShards.open(str(tmp_path / "out"))
    text = bytes(shards.read(0, len(shards)).astype(np.uint8)).decode()
    assert text.startswith("plain text, one document\n") and "doc 39 " in text and text.endswith("row 29 of parquet\n\n")


def test_an_interrupted_prepare_keeps_its_finished_shards(tmp_path: Path) -> None:
    folder, out = inputs(tmp_path), tmp_path / "out"
    first = prepare([str(folder)], out, workers=2, chunk_bytes=256)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.bin")}
    # an interruption: the manifest and the last shard's commit never written, a temporary left behind
    (out / "manifest.json").unlink()
    (out / "shard-00003.json").unlink()
    (out / "shard-00001.tmp-999").write_bytes(b"partial")
    calls: list[tuple[int, int, int]] = []
    again = prepare([str(folder)], out, workers=2, chunk_bytes=256, on_progress=lambda *a: calls.append(a))
    assert again == first
    assert calls[0][0] == calls[0][1] - 1  # all but one unit kept at the start
    redone = [name for name, stamp in stamps.items() if (out / name).stat().st_mtime_ns != stamp]
    assert redone == ["shard-00003.bin"] and not list(out.glob("*.tmp*"))


def test_a_trained_tokenizer_and_a_named_one(tmp_path: Path) -> None:
    folder = inputs(tmp_path)
    manifest = prepare([str(folder)], tmp_path / "bpe", train_vocab=400, workers=2)
    tokenizer = load_tokenizer(str(tmp_path / "bpe" / "tokenizer.json"))
    assert manifest.vocab_size == tokenizer.vocab_size <= 400 and manifest.eot == tokenizer.eot
    assert manifest.tokenizer_sha256 == tokenizer.sha256 and manifest.max_token < 400
    shards = TokenShards.open(str(tmp_path / "bpe"))
    assert len(shards) < 0.6 * prepare([str(folder)], tmp_path / "b", workers=1).tokens  # merges compress
    assert tokenizer.model.decode(shards.read(0, 8).tolist()).startswith("plain text")
    named = prepare([str(folder / "a.txt")], tmp_path / "named", tokenizer=str(tmp_path / "bpe" / "tokenizer.json"))
    assert named.tokenizer_sha256 == tokenizer.sha256


def test_the_cli_prepares_and_refuses_a_missing_input(tmp_path: Path) -> None:
    folder = inputs(tmp_path)
    done = rayfleet("data", "prepare", str(folder / "*.jsonl"), "-o", str(tmp_path / "out"), "--workers", "1")
    assert done.returncode == 0, done.stderr
    assert "tokens in 1 shard(s), 40 documents" in done.stdout
    missing = rayfleet("data", "prepare", str(tmp_path / "nope.txt"), "-o", str(tmp_path / "o2"))
    assert missing.returncode == 2 and "nope.txt" in missing.stderr
