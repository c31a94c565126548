"""A bad corpus is refused by `rayfleet submit` with exit 2 and one message naming the job file,
the field, the corpus file and the fix, before any fleet is contacted (nothing submitted)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import rayfleet
from tests.support.corpus import write_corpus
from tests.support.specs import job_spec


def submit(tmp_path: Path, data: dict, **extra: object) -> tuple[Path, object]:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job_spec("own", data={"seq_len": 16, "global_batch": 2, **data}, **extra)))
    return path, rayfleet("submit", "-f", str(path), home=tmp_path / "home", timeout=120)


def refused(tmp_path: Path, data: dict, *words: str, **extra: object) -> str:
    path, result = submit(tmp_path, data, **extra)
    assert result.returncode == 2, (result.stdout, result.stderr)
    message = " ".join(result.stderr.split())
    assert path.name in message and "Traceback" not in message, message
    for word in words:
        assert word in message, (word, message)
    return message


def test_a_vocabulary_larger_than_the_models_is_refused(tmp_path: Path) -> None:
    write_corpus(tmp_path / "c", sizes=[100], vocab=1000)
    refused(tmp_path, {"tokens": "c"}, "data.tokens", "manifest.json", "vocab_size 1000",
            "model.overrides.vocab_size: 1000")


def test_a_missing_or_empty_shard_and_a_mismatched_manifest_are_refused(tmp_path: Path) -> None:
    write_corpus(tmp_path / "c", sizes=[100, 100], vocab=256)
    (tmp_path / "c" / "shard-00001.bin").unlink()
    refused(tmp_path, {"tokens": "c"}, "shard-00001.bin", "missing")
    write_corpus(tmp_path / "c", sizes=[100, 100], vocab=256)
    (tmp_path / "c" / "shard-00001.bin").write_bytes(b"")
    refused(tmp_path, {"tokens": "c"}, "shard-00001.bin", "empty shard")
    np.zeros(7, dtype=np.uint16).tofile(tmp_path / "c" / "shard-00001.bin")
    refused(tmp_path, {"tokens": "c"}, "shard-00001.bin", "does not match")
    refused(tmp_path, {"tokens": "nowhere"}, "nowhere/manifest.json", "data prepare")


def test_a_seq_len_longer_than_the_corpus_is_refused(tmp_path: Path) -> None:
    write_corpus(tmp_path / "c", sizes=[40], vocab=256)
    refused(tmp_path, {"tokens": "c", "seq_len": 64}, "data.tokens", "40 tokens", "lower data.seq_len")
    refused(tmp_path, {"tokens": "c", "seq_len": 16, "validation": {"fraction": 0.1}},
            "data.validation.fraction", "held-out")


def test_text_needs_files_and_a_fitting_tokenizer(tmp_path: Path) -> None:
    refused(tmp_path, {"text": "missing/*.txt"}, "data.text", "no such file")
    (tmp_path / "a.txt").write_text("some text " * 100)
    refused(tmp_path, {"text": "a.txt", "tokenizer": "tok.json"}, "data.text", "tok.json")


@pytest.mark.parametrize("data", [{"tokens": "c", "text": "a.txt"}, {"tokenizer": "t.json"},
                                  {"validation": {"eval_every": 5}}])
def test_contradictory_data_sections_are_refused(tmp_path: Path, data: dict) -> None:
    refused(tmp_path, data, "data")


def test_a_good_corpus_passes_the_checks_and_then_needs_a_fleet(tmp_path: Path) -> None:
    write_corpus(tmp_path / "c", sizes=[300], vocab=256)
    _, result = submit(tmp_path, {"tokens": "c", "validation": {"fraction": 0.2}})
    assert result.returncode != 0 and "rayfleet up" in result.stderr  # got past the corpus to the fleet
