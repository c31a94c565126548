"""Reading a token corpus without loading it whole: local shards through numpy memory maps,
`s3://bucket/prefix` through ranged GETs (boto3, imported only for S3).

A corpus is addressed as one stream of tokens, its shards end to end in manifest order;
`TokenShards.read(start, count)` returns any slice of it. S3 reads of one batch run concurrently
(`read_many`). Without `BlockReads` each window is one ranged GET, and a GET's latency, not its
bandwidth, bounds a single stream. With them (the "blocks" order of jobs/data/order.py, which
visits the corpus a group of blocks at a time) a window is cut from its block, fetched whole by one
GET per shard it spans and kept in a small LRU cache; `prefetch` fetches the blocks of the coming
windows in the background, so a GET's latency is paid once per block, off the step. The endpoint is the job's `data.endpoint_url`, else botocore's own resolution
(`AWS_ENDPOINT_URL`, the profile), with the standard credential chain.
"""
from __future__ import annotations

import bisect
import functools
import os
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from rayfleet.jobs.data.manifest import DTYPES, FILE, Manifest


class Store(Protocol):
    """Where a corpus's files live: a folder or an S3 prefix."""

    where: str

    def read_text(self, name: str) -> str: ...
    def size(self, name: str) -> int | None: ...
    def read_range(self, name: str, start: int, stop: int) -> bytes: ...


class LocalStore:
    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.where = str(self.folder)

    def read_text(self, name: str) -> str:
        return (self.folder / name).read_text()

    def size(self, name: str) -> int | None:
        try:
            return (self.folder / name).stat().st_size
        except OSError:
            return None

    def read_range(self, name: str, start: int, stop: int) -> bytes:
        with open(self.folder / name, "rb") as handle:
            handle.seek(start)
            return handle.read(stop - start)

    @functools.lru_cache(maxsize=None)
    def memmap(self, name: str, dtype: str) -> np.memmap:
        return np.memmap(self.folder / name, dtype=np.dtype(dtype).newbyteorder("<"), mode="r")


class S3Store:
    def __init__(self, url: str, endpoint_url: str | None = None) -> None:
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.where = url.rstrip("/")
        self.endpoint_url = endpoint_url

    @functools.cached_property
    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        # many concurrent ranged GETs per batch: one connection each
        return boto3.client("s3", endpoint_url=self.endpoint_url or None,
                            config=Config(max_pool_connections=64, retries={"mode": "standard"}))

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def read_text(self, name: str) -> str:
        return self.client.get_object(Bucket=self.bucket, Key=self.key(name))["Body"].read().decode()

    def size(self, name: str) -> int | None:
        return self.sizes.get(self.key(name))

    @functools.cached_property
    def sizes(self) -> dict[str, int]:
        """Every object under the prefix with its size: one paginated LIST, not a HEAD per shard."""
        found = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                          Prefix=self.key("")):
            for item in page.get("Contents", []):
                found[item["Key"]] = int(item["Size"])
        return found

    def read_range(self, name: str, start: int, stop: int) -> bytes:
        answer = self.client.get_object(Bucket=self.bucket, Key=self.key(name), Range=f"bytes={start}-{stop - 1}")
        return answer["Body"].read()


def open_store(where: str, endpoint_url: str | None = None) -> Store:
    """The store of a corpus path or `s3://` URL."""
    if where.startswith("s3://"):
        return S3Store(where, endpoint_url)
    return LocalStore(where)


def read_manifest(store: Store) -> Manifest:
    return Manifest.from_json(store.read_text(FILE))


@dataclass(frozen=True)
class BlockReads:
    """Read windows out of whole blocks: block b holds tokens [b x block_tokens, (b + 1) x
    block_tokens + count - 1) of the stream, so every window of `count` tokens starting in it lies
    in it whole. At most `capacity` blocks are held (the least recently used goes first)."""

    block_tokens: int
    capacity: int

    def __post_init__(self) -> None:
        if self.block_tokens < 1 or self.capacity < 1:
            raise ValueError(f"blocks of {self.block_tokens} tokens, {self.capacity} held: both must be positive")


class BlockCache:
    """The blocks of one `BlockReads` geometry and window length, fetched on a thread pool. Used
    from one thread (the loader's); only the fetches run on the pool."""

    def __init__(self, shards: TokenShards, reads: BlockReads, count: int, pool: ThreadPoolExecutor) -> None:
        self.shards, self.reads, self.count, self.pool = shards, reads, count, pool
        self.blocks: OrderedDict[int, Future] = OrderedDict()

    def block(self, index: int) -> Future:
        """Block `index`'s tokens (native dtype), fetched now if not held."""
        found = self.blocks.get(index)
        if found is not None:
            self.blocks.move_to_end(index)
            return found
        first = index * self.reads.block_tokens
        length = min(self.reads.block_tokens + self.count - 1, len(self.shards) - first)
        found = self.blocks[index] = self.pool.submit(self.shards.raw, first, length)
        while len(self.blocks) > self.reads.capacity:
            self.blocks.popitem(last=False)
        return found

    def read_many(self, starts: Sequence[int], count: int) -> np.ndarray:
        size = self.reads.block_tokens
        fetched = {index: self.block(index) for index in dict.fromkeys(int(s) // size for s in starts)}
        out = np.empty((len(starts), count), dtype=np.int64)
        for row, start in enumerate(starts):
            if start < 0 or start + count > len(self.shards):
                raise IndexError(f"tokens [{start}, {start + count}) outside a corpus of {len(self.shards)}")
            index, offset = divmod(int(start), size)
            try:
                out[row] = fetched[index].result()[offset:offset + count]
            except Exception:
                self.blocks.pop(index, None)  # fetched again next time, not failed for good
                raise
        return out

    def prefetch(self, starts: Sequence[int]) -> None:
        for index in dict.fromkeys(int(s) // self.reads.block_tokens for s in starts):
            self.block(index)


class TokenShards:
    """A corpus's shards as one stream of token ids, read on demand."""

    def __init__(self, store: Store, manifest: Manifest) -> None:
        self.store, self.manifest = store, manifest
        self.dtype = np.dtype(manifest.dtype).newbyteorder("<")
        self.itemsize = DTYPES[manifest.dtype]
        self.starts = [0]
        for shard in manifest.shards:
            self.starts.append(self.starts[-1] + shard.tokens)
        self._pool: ThreadPoolExecutor | None = None
        self._caches: dict[tuple[BlockReads, int], BlockCache] = {}

    @classmethod
    def open(cls, where: str, endpoint_url: str | None = None) -> TokenShards:
        store = open_store(where, endpoint_url)
        return cls(store, read_manifest(store))

    def __len__(self) -> int:
        return self.starts[-1]

    def pieces(self, start: int, count: int) -> list[tuple[str, int, int]]:
        """(shard name, first token, end token) in shard coordinates covering [start, start+count)."""
        if start < 0 or start + count > len(self):
            raise IndexError(f"tokens [{start}, {start + count}) outside a corpus of {len(self)}")
        out = []
        index = bisect.bisect_right(self.starts, start) - 1
        while count > 0:
            offset = start - self.starts[index]
            take = min(count, self.starts[index + 1] - start)
            if take > 0:
                out.append((self.manifest.shards[index].name, offset, offset + take))
            start, count, index = start + take, count - take, index + 1
        return out

    def raw(self, start: int, count: int) -> np.ndarray:
        """Tokens [start, start+count) of the stream in the corpus's dtype (one GET per shard spanned)."""
        parts = []
        for name, first, end in self.pieces(start, count):
            if isinstance(self.store, LocalStore):
                parts.append(self.store.memmap(name, self.manifest.dtype)[first:end])
            else:
                data = self.store.read_range(name, first * self.itemsize, end * self.itemsize)
                parts.append(np.frombuffer(data, dtype=self.dtype))
        return np.concatenate(parts) if len(parts) != 1 else parts[0]

    def read(self, start: int, count: int) -> np.ndarray:
        """Tokens [start, start+count) of the stream as int64."""
        return self.raw(start, count).astype(np.int64)

    def read_many(self, starts: Sequence[int], count: int, blocks: BlockReads | None = None) -> np.ndarray:
        """len(starts) x count tokens; remote reads run concurrently, out of whole blocks if `blocks`
        (local shards are memory-mapped: they read in place either way)."""
        if isinstance(self.store, LocalStore) or (len(starts) < 2 and blocks is None):
            return np.stack([self.read(int(s), count) for s in starts])
        if blocks is not None:
            return self._cache(blocks, count).read_many(starts, count)
        return np.stack(list(self.pool.map(lambda s: self.read(int(s), count), starts)))

    def prefetch(self, starts: Sequence[int], count: int, blocks: BlockReads) -> None:
        """Start fetching, in the background, the blocks that windows at `starts` will be read from."""
        if not isinstance(self.store, LocalStore):
            self._cache(blocks, count).prefetch(starts)

    @property
    def pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=min(32, (os.cpu_count() or 1) * 8))
        return self._pool

    def _cache(self, blocks: BlockReads, count: int) -> BlockCache:
        key = (blocks, count)
        if key not in self._caches:
            self._caches[key] = BlockCache(self, blocks, count, self.pool)
        return self._caches[key]


class ArrayTokens:
    """Tokens already in memory (the built-in corpus, text tokenised at start-up) read like shards."""

    def __init__(self, tokens: np.ndarray) -> None:
        self.tokens = tokens

    def __len__(self) -> int:
        return len(self.tokens)

    def read(self, start: int, count: int) -> np.ndarray:
        return self.tokens[start:start + count].astype(np.int64)

    def read_many(self, starts: Sequence[int], count: int, blocks: BlockReads | None = None) -> np.ndarray:
        return np.stack([self.read(int(s), count) for s in starts])

    def prefetch(self, starts: Sequence[int], count: int, blocks: BlockReads) -> None:
        """Nothing to fetch: the tokens are in memory."""


class TokenView:
    """Tokens [first, first+length) of another source: a train or validation split."""

    def __init__(self, source: Any, first: int, length: int) -> None:
        self.source, self.first, self.length = source, first, length

    def __len__(self) -> int:
        return self.length

    def read(self, start: int, count: int) -> np.ndarray:
        return self.source.read(self.first + start, count)

    def read_many(self, starts: Sequence[int], count: int, blocks: BlockReads | None = None) -> np.ndarray:
        return self.source.read_many([self.first + int(s) for s in starts], count, blocks)

    def prefetch(self, starts: Sequence[int], count: int, blocks: BlockReads) -> None:
        self.source.prefetch([self.first + int(s) for s in starts], count, blocks)
