"""Reading shards: local memory maps and S3 ranged GETs (moto_server) return the same tokens, across
shard boundaries, without reading a shard whole."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from rayfleet.jobs.data.manifest import FILE, Manifest, Shard
from rayfleet.jobs.data.shards import LocalStore, TokenShards
from tests.support.corpus import upload, write_corpus
from tests.support.moto_ec2 import CREDENTIALS, start_moto, stop_process


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto_server S3 endpoint on 127.0.0.1 (AWS_ENDPOINT_URL-style URL)."""
    mp = pytest.MonkeyPatch()
    for key, value in CREDENTIALS.items():
        mp.setenv(key, value)
    process, url = start_moto()
    try:
        yield url
    finally:
        stop_process(process)
        mp.undo()


def test_local_shards_read_as_one_stream(tmp_path: Path) -> None:
    tokens = write_corpus(tmp_path, sizes=[100, 1, 250], vocab=50_000)
    shards = TokenShards.open(str(tmp_path))
    assert len(shards) == 351 and shards.manifest.dtype == "uint16"
    for start, count in ((0, 351), (95, 10), (100, 1), (99, 3), (350, 1)):
        assert np.array_equal(shards.read(start, count), tokens[start:start + count])
    starts = [0, 90, 200]
    assert np.array_equal(shards.read_many(starts, 20), np.stack([tokens[s:s + 20] for s in starts]))
    with pytest.raises(IndexError):
        shards.read(340, 20)


def test_uint32_shards_for_large_vocabularies(tmp_path: Path) -> None:
    tokens = write_corpus(tmp_path, sizes=[64], vocab=100_000)
    shards = TokenShards.open(str(tmp_path))
    assert shards.manifest.dtype == "uint32" and np.array_equal(shards.read(0, 64), tokens)
    assert isinstance(shards.store, LocalStore)
    assert isinstance(shards.store.memmap("shard-00000.bin", "uint32"), np.memmap)  # never loaded whole


def test_s3_shards_read_by_ranged_gets_the_same_tokens(tmp_path: Path, s3: str) -> None:
    tokens = write_corpus(tmp_path, sizes=[300, 200], vocab=1000)
    upload(tmp_path, s3, "corpus", "a/b")
    shards = TokenShards.open("s3://corpus/a/b", endpoint_url=s3)
    assert len(shards) == 500
    assert np.array_equal(shards.read(290, 20), tokens[290:310])
    starts = list(range(0, 480, 37))
    assert np.array_equal(shards.read_many(starts, 20), np.stack([tokens[s:s + 20] for s in starts]))


def test_a_manifest_whose_total_disagrees_with_its_shards_is_refused() -> None:
    text = Manifest("uint16", 256, "bytes", "bytes", (Shard("a.bin", 10),)).to_json().replace('"tokens": 10\n}',
                                                                                              '"tokens": 11\n}')
    with pytest.raises(ValueError, match="tokens"):
        Manifest.from_json(text)
    assert FILE == "manifest.json"


def test_an_s3_corpus_is_checked_from_one_listing(tmp_path: Path, s3: str) -> None:
    import boto3

    from rayfleet.jobs.data.checks import CorpusError, load_checked
    from rayfleet.jobs.data.shards import open_store

    write_corpus(tmp_path, sizes=[50, 60], vocab=256)
    upload(tmp_path, s3, "checked", "c")
    assert load_checked(open_store("s3://checked/c", s3)).tokens == 110
    boto3.client("s3", endpoint_url=s3).delete_object(Bucket="checked", Key="c/shard-00001.bin")
    with pytest.raises(CorpusError, match="s3://checked/c/shard-00001.bin: listed in manifest.json but missing"):
        load_checked(open_store("s3://checked/c", s3))
    with pytest.raises(CorpusError, match="s3://nobucket/x/manifest.json: cannot be read"):
        load_checked(open_store("s3://nobucket/x", s3))
