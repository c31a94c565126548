"""Reading shards: local memory maps and S3 ranged GETs (moto_server) return the same tokens, across
shard boundaries, without reading a shard whole."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from rayfleet.jobs.data.manifest import FILE, Manifest, Shard
from rayfleet.jobs.data.shards import BlockCache, BlockReads, LocalStore, TokenShards
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


def random_windows(total: int, count: int, windows: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).integers(0, total - count + 1, windows).tolist()


def test_windows_cut_from_whole_blocks_are_the_windows_read_one_by_one(tmp_path: Path) -> None:
    tokens = write_corpus(tmp_path, sizes=[700, 3, 1200, 400, 97], vocab=50_000)
    shards = TokenShards.open(str(tmp_path))
    # blocks of 50 tokens, 3 held: windows of 33 cross block and shard boundaries, blocks are evicted
    cache = BlockCache(shards, BlockReads(block_tokens=50, capacity=3), 33, shards.pool)
    for seed in range(20):
        starts = random_windows(len(tokens), 33, 16, seed)
        assert np.array_equal(cache.read_many(starts, 33), shards.read_many(starts, 33))
        assert np.array_equal(cache.read_many(starts, 33), np.stack([tokens[s:s + 33] for s in starts]))
        assert len(cache.blocks) <= 3
    last = len(tokens) - 33  # the corpus's last window: its block is cut short
    assert np.array_equal(cache.read_many([last], 33)[0], tokens[last:])
    with pytest.raises(IndexError):
        cache.read_many([last + 1], 33)


def test_s3_block_reads_return_the_tokens_of_ranged_gets(tmp_path: Path, s3: str) -> None:
    tokens = write_corpus(tmp_path, sizes=[900, 1, 1300, 600], vocab=1000)
    upload(tmp_path, s3, "blocks", "c")
    shards = TokenShards.open("s3://blocks/c", endpoint_url=s3)
    reads = BlockReads(block_tokens=128, capacity=4)
    for seed in range(6):
        starts = random_windows(len(tokens), 65, 24, seed)
        shards.prefetch(random_windows(len(tokens), 65, 24, seed + 100), 65, reads)
        got = shards.read_many(starts, 65, reads)
        assert np.array_equal(got, shards.read_many(starts, 65))  # one ranged GET per window
        assert np.array_equal(got, np.stack([tokens[s:s + 65] for s in starts]))
    cache = shards._caches[(reads, 65)]
    assert len(cache.blocks) <= 4 and all(len(f.result()) <= 128 + 64 for f in cache.blocks.values())
