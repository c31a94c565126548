"""Checkpoints on S3 (any S3-compatible store): where they live, and the object operations the
checkpointer needs (upload a rank's folder, put the commit objects, list, download, delete).

A checkpoint on S3 has the layout of one on a shared path, under the storage's prefix:
`s3://bucket/prefix/jobs/<name>/runs/<submission>/rayfleet-step-N/` holds every rank's DCP files,
the ranks' RNG files, `.metadata`, `meta.json` and, last, `COMMITTED`. S3 has no rename, so the
commit is the marker alone: every rank uploads its files, the ranks agree that all uploads
succeeded, and only then rank 0 puts `meta.json` and `COMMITTED`. A reader lists only
checkpoints whose `COMMITTED` object exists, so a crash mid-upload leaves the previous
checkpoint the newest. (S3 has been strongly read-after-write consistent since December 2020, so a
listing that shows the marker shows every object put before it.)

The endpoint is the job's `checkpoint.endpoint_url` (or the fleet's), else botocore's own resolution
(AWS_ENDPOINT_URL, then AWS's). Credentials come only from botocore's chain (environment, instance
role); nothing here logs or writes them. boto3 is imported on first use: a local fleet that keeps
its checkpoints on a shared path needs no AWS SDK.
"""
from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

# one connection per concurrent part; DCP writes one file per rank and thread
UPLOAD_THREADS = 8
PART_BYTES = 64 << 20  # boto3's transfer manager splits files above this into parts of this size


@dataclass(frozen=True)
class S3Path:
    """An object key or key prefix in a bucket, used as checkpoint.py uses a Path: `/`, `name`, `parent`."""

    bucket: str
    key: str
    endpoint_url: str | None = field(default=None, compare=False)

    @classmethod
    def parse(cls, url: str, endpoint_url: str | None = None) -> S3Path:
        bucket, _, key = url.removeprefix("s3://").partition("/")
        return cls(bucket, key.strip("/"), endpoint_url)

    def __truediv__(self, part: str) -> S3Path:
        return S3Path(self.bucket, f"{self.key}/{part}" if self.key else part, self.endpoint_url)

    @property
    def name(self) -> str:
        return self.key.rpartition("/")[2]

    @property
    def parent(self) -> S3Path:
        return S3Path(self.bucket, self.key.rpartition("/")[0], self.endpoint_url)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@functools.lru_cache(maxsize=None)
def client(endpoint_url: str | None) -> Any:
    """One boto3 S3 client per endpoint and process (clients are thread-safe)."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError as error:
        raise RuntimeError("checkpoints on s3:// need boto3 on every node: pip install 'rayfleet[aws]'") from error
    return boto3.client("s3", endpoint_url=endpoint_url or None,
                        config=Config(max_pool_connections=2 * UPLOAD_THREADS, retries={"mode": "standard"}))


def _client_of(path: S3Path) -> Any:
    return client(path.endpoint_url)


def upload_folder(folder: Path, to: S3Path) -> list[str]:
    """Upload every file of `folder` as `to/<name>`, files in parallel and each large one in
    parts (boto3's transfer manager); returns the names uploaded."""
    from boto3.s3.transfer import TransferConfig

    config = TransferConfig(multipart_threshold=PART_BYTES, multipart_chunksize=PART_BYTES,
                            max_concurrency=UPLOAD_THREADS)
    files = sorted(p for p in folder.iterdir() if p.is_file())

    def one(path: Path) -> None:
        _client_of(to).upload_file(str(path), to.bucket, (to / path.name).key, Config=config)

    _all(one, files)
    return [p.name for p in files]


def put(path: S3Path, body: bytes) -> None:
    _client_of(path).put_object(Bucket=path.bucket, Key=path.key, Body=body)


def get(path: S3Path) -> bytes:
    return _client_of(path).get_object(Bucket=path.bucket, Key=path.key)["Body"].read()


def objects(prefix: S3Path) -> dict[str, Any]:
    """Every object under `prefix/` (its key relative to the prefix) -> its LastModified."""
    found: dict[str, Any] = {}
    start = f"{prefix.key}/" if prefix.key else ""
    pages = _client_of(prefix).get_paginator("list_objects_v2").paginate(Bucket=prefix.bucket, Prefix=start)
    for page in pages:
        for item in page.get("Contents", []):
            found[item["Key"][len(start):]] = item["LastModified"]
    return found


def download_folder(src: S3Path, to: Path, wanted: Callable[[str], bool] = lambda name: True) -> None:
    """Download the objects directly under `src/` whose names `wanted` accepts into `to`."""
    to.mkdir(parents=True, exist_ok=True)
    names = [name for name in objects(src) if "/" not in name and wanted(name)]

    def one(name: str) -> None:
        _client_of(src).download_file(src.bucket, (src / name).key, str(to / name))

    _all(one, names)


def delete_prefix(prefix: S3Path) -> None:
    """Delete every object under `prefix/` (1000 keys a request, S3's limit for DeleteObjects)."""
    keys = [(prefix / name).key for name in objects(prefix)]
    for start in range(0, len(keys), 1000):
        batch = [{"Key": key} for key in keys[start:start + 1000]]
        _client_of(prefix).delete_objects(Bucket=prefix.bucket, Delete={"Objects": batch, "Quiet": True})


def _all(action: Callable[[Any], None], items: list[Any]) -> None:
    """`action` on every item, UPLOAD_THREADS at a time; raises the first failure."""
    if not items:
        return
    with ThreadPoolExecutor(max_workers=min(UPLOAD_THREADS, len(items))) as pool:
        for done in [pool.submit(action, item) for item in items]:
            done.result()


def staging_root() -> Path:
    """The node-local folder where a rank writes its files before uploading them, and where it
    downloads a checkpoint to load: the temp dir of the node (Ray's workers' TMPDIR)."""
    import tempfile

    return Path(tempfile.gettempdir()) / "rayfleet-checkpoints"


def local_folder(path: S3Path, purpose: str, rank: int) -> Path:
    """This rank's own node-local folder for `path` (ranks of one node never share one)."""
    return staging_root() / purpose / path.bucket / path.key / f"rank-{rank:05d}"


def discard(folder: Path) -> None:
    """Remove a rank's local folder, and its parents up to the staging root while they are empty
    (another rank of the node may still be using one: then it stays)."""
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    root = staging_root()
    for parent in folder.parents:
        if parent == root or root not in parent.parents:
            break
        try:
            parent.rmdir()
        except OSError:  # not empty, or gone
            break
