"""Loader throughput: tokens/s one rank's batches come out of `WindowBatches` (jobs/worker/data.py:
the epoch permutation, the reads, the int64 tensors a step trains on), from local shards through
memory maps and from S3 (`moto_server` on 127.0.0.1), in both orders of `data.shuffle`: "windows"
(S3: one ranged GET per window, concurrent within a batch) and "blocks" (S3: whole ~1M-token
blocks, one GET each, the coming ones fetched in the background). Figures against the 536k
tokens/s one H200 consumes training dense_124m (bench/results/gpu_throughput_h200_bf16_vs_hf.json,
530.8k measured; issue 27 rounds it to 536k; target >= 10x per rank), and against S3 "windows"
(the loader's S3 path before "blocks") measured in the same run at the same world size.

The corpus is random uint16 tokens written as `rayfleet data prepare` writes them; the local
shards were just written, so they read from the page cache (a corpus larger than memory reads at
the disk's random-read rate instead). Batches are seq_len 1024 x 32 windows per rank (dense_124m's
shape), rank 0 of `world` measured. Each configuration reads after one warm-up step: local ones
`--steps` steps; S3 "windows" `--steps / 5`; S3 "blocks" 1.5 groups of 16 blocks of samples
(768 steps at world 1, 96 at world 8), so the fetch of a group behind the one being read is in
the figure.

    .venv/bin/python bench/data_loader.py [--tokens 33554432] [--s3-tokens 50331648] [--steps 30] \
        [--out bench/results/data_loader.json]
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from rayfleet.jobs.data.manifest import FILE, Manifest, Shard
from rayfleet.jobs.data.order import SPAN_BLOCKS, block_windows_for
from rayfleet.jobs.data.shards import TokenShards
from rayfleet.jobs.worker.data import WindowBatches

H200_DENSE_124M_TOK_S = 536_000
SEQ_LEN, PER_RANK = 1024, 32


def write_corpus(folder: Path, tokens: int, shards: int) -> None:
    rng = np.random.default_rng(0)
    listed = []
    for index in range(shards):
        name = f"shard-{index:05d}.bin"
        rng.integers(0, 50_257, tokens // shards, dtype=np.uint16).tofile(folder / name)
        listed.append(Shard(name, tokens // shards, 1))
    (folder / FILE).write_text(Manifest("uint16", 50_257, "random", "random", tuple(listed)).to_json())


def measure(source: TokenShards, steps: int, world: int, shuffle: str) -> float:
    """tokens/s of rank 0 of `world`, reading its slice of a global batch of PER_RANK x world windows."""
    batches = WindowBatches(source, SEQ_LEN, PER_RANK * world, seed=0, shuffle=shuffle)
    batches.batch(0, 0, world)
    started = time.perf_counter()
    for step in range(1, steps + 1):
        inputs, _ = batches.batch(step, 0, world)
    elapsed = time.perf_counter() - started
    assert inputs.shape == (PER_RANK, SEQ_LEN)
    return steps * PER_RANK * SEQ_LEN / elapsed


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p",
                                str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            connection.request("GET", "/moto-api/")
            if connection.getresponse().status < 500:
                return process, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("moto_server did not answer within 60 s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=32 << 20)
    parser.add_argument("--s3-tokens", type=int, default=48 << 20, help="3 groups of 16 blocks of 1M tokens")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "data_loader.json"))
    args = parser.parse_args()
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
        os.environ[key] = value
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "local"
        local.mkdir()
        write_corpus(local, args.tokens, 8)
        for shuffle in ("windows", "blocks"):
            for world in (1, 8):
                rows.append({"source": "local memmap", "shuffle": shuffle, "corpus_tokens": args.tokens,
                             "world": world, "tok_s": measure(TokenShards.open(str(local)), args.steps, world,
                                                              shuffle)})
        remote = Path(tmp) / "remote"
        remote.mkdir()
        write_corpus(remote, args.s3_tokens, 4)
        process, endpoint = start_moto()
        try:
            import boto3

            client = boto3.client("s3", endpoint_url=endpoint)
            client.create_bucket(Bucket="corpus")
            for path in remote.iterdir():
                client.upload_file(str(path), "corpus", f"bench/{path.name}")
            group = SPAN_BLOCKS * block_windows_for(SEQ_LEN)
            for world in (1, 8):
                rows.append({"source": "S3 (moto_server, loopback)", "shuffle": "windows",
                             "corpus_tokens": args.s3_tokens, "world": world,
                             "tok_s": measure(TokenShards.open("s3://corpus/bench", endpoint),
                                              max(3, args.steps // 5), world, "windows")})
            for world in (1, 8):
                rows.append({"source": "S3 (moto_server, loopback)", "shuffle": "blocks",
                             "corpus_tokens": args.s3_tokens, "world": world,
                             "tok_s": measure(TokenShards.open("s3://corpus/bench", endpoint),
                                              3 * group // (2 * PER_RANK * world), world, "blocks")})
        finally:
            process.terminate()
            process.wait(timeout=10)
    today = {row["world"]: row["tok_s"] for row in rows if row["source"].startswith("S3") and row["shuffle"] == "windows"}
    print(f"{'source':<28} {'shuffle':<8} {'world':>5} {'tok/s per rank':>15} {'x H200 dense_124m':>18} "
          f"{'x S3 windows':>13}")
    for row in rows:
        row["vs_h200_dense_124m"] = row["tok_s"] / H200_DENSE_124M_TOK_S
        row["vs_s3_windows_same_world"] = row["tok_s"] / today[row["world"]]
        print(f"{row['source']:<28} {row['shuffle']:<8} {row['world']:>5} {row['tok_s']:>15,.0f} "
              f"{row['vs_h200_dense_124m']:>17.2f}x {row['vs_s3_windows_same_world']:>12.1f}x")
    out = {"benchmark": "data_loader", "date": time.strftime("%Y-%m-%d"), "machine": platform.node(),
           "cpus": os.cpu_count(), "seq_len": SEQ_LEN, "windows_per_rank": PER_RANK, "steps": args.steps,
           "block_tokens": block_windows_for(SEQ_LEN) * SEQ_LEN, "span_blocks": SPAN_BLOCKS,
           "reference_tok_s": H200_DENSE_124M_TOK_S, "command": "bench/data_loader.py " + " ".join(sys.argv[1:]),
           "rows": rows}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
