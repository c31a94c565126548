"""Token corpora for tests: shards of known random tokens written as `rayfleet data prepare` writes
them, and copied to an S3 bucket (moto_server)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from rayfleet.jobs.data.manifest import FILE, Manifest, Shard, dtype_for


def write_corpus(folder: Path, sizes: list[int], vocab: int = 256, seed: int = 0) -> np.ndarray:
    """Shards of `sizes` tokens below `vocab` and their manifest in `folder`; all tokens, in order."""
    folder.mkdir(parents=True, exist_ok=True)
    dtype = dtype_for(vocab)
    tokens = np.random.default_rng(seed).integers(0, vocab, sum(sizes))
    shards, at = [], 0
    for index, size in enumerate(sizes):
        name = f"shard-{index:05d}.bin"
        tokens[at:at + size].astype(np.dtype(dtype).newbyteorder("<")).tofile(folder / name)
        shards.append(Shard(name, size, 1))
        at += size
    manifest = Manifest(dtype, vocab, "test", "test", tuple(shards), documents=len(sizes),
                        max_token=int(tokens.max()))
    (folder / FILE).write_text(manifest.to_json())
    return tokens


def upload(folder: Path, endpoint: str, bucket: str, prefix: str) -> None:
    """Every file of `folder` to s3://bucket/prefix/ at `endpoint`, creating the bucket."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=bucket)
    for path in folder.iterdir():
        client.upload_file(str(path), bucket, f"{prefix}/{path.name}")
