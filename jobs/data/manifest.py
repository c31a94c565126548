"""A token corpus's manifest: what `rayfleet data prepare` writes beside its shards and a job
reads first.

The layout is nanoGPT's and Megatron's: each shard is a flat `.bin` of little-endian token ids
(uint16 where the vocabulary fits in 65,536, else uint32), with no header, so it memory-maps as
is. `manifest.json` says how to read them: dtype, vocabulary size, tokenizer (name and sha256 of
its file, "bytes" for the 256 byte values), the end-of-document token if any, token and document
counts, and each shard's name, tokens and sha256.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

FILE = "manifest.json"
FORMAT = "rayfleet-tokens/1"
DTYPES = {"uint16": 2, "uint32": 4}


@dataclass(frozen=True)
class Shard:
    name: str
    tokens: int
    documents: int = 0
    sha256: str = ""

    def nbytes(self, dtype: str) -> int:
        return self.tokens * DTYPES[dtype]


@dataclass(frozen=True)
class Manifest:
    dtype: str
    vocab_size: int
    tokenizer: str
    tokenizer_sha256: str
    shards: tuple[Shard, ...]
    documents: int = 0
    eot: int | None = None
    max_token: int | None = None
    format: str = FORMAT
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        return sum(shard.tokens for shard in self.shards)

    def to_json(self) -> str:
        doc = asdict(self)
        doc["tokens"] = self.tokens
        return json.dumps(doc, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        """Parse a manifest; ValueError naming the field that is missing or wrong."""
        doc = json.loads(text)
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        for key in ("dtype", "vocab_size", "tokenizer", "shards"):
            if key not in doc:
                raise ValueError(f"field {key!r} is missing")
        if doc["dtype"] not in DTYPES:
            raise ValueError(f"dtype: got {doc['dtype']!r}; accepted: {', '.join(DTYPES)}")
        shards = tuple(Shard(name=s["name"], tokens=int(s["tokens"]), documents=int(s.get("documents", 0)),
                             sha256=s.get("sha256", "")) for s in doc["shards"])
        manifest = cls(dtype=doc["dtype"], vocab_size=int(doc["vocab_size"]), tokenizer=str(doc["tokenizer"]),
                       tokenizer_sha256=str(doc.get("tokenizer_sha256", "")), shards=shards,
                       documents=int(doc.get("documents", 0)), eot=doc.get("eot"), max_token=doc.get("max_token"),
                       format=doc.get("format", FORMAT), extra=doc.get("extra", {}))
        if "tokens" in doc and int(doc["tokens"]) != manifest.tokens:
            raise ValueError(f"tokens: says {doc['tokens']} but its shards add up to {manifest.tokens}")
        return manifest


def dtype_for(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 1 << 16 else "uint32"
