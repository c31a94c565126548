"""Tokenizers: the 256 byte values (the built-in corpus's, and the default), or a Hugging Face
`tokenizers` file (`tokenizer.json`); and training a byte-level BPE on a corpus, since no
pretrained vocabulary can be downloaded on an offline fleet. `tokenizers` is imported only when
a tokenizer file is used."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

EOT = "<|endoftext|>"  # GPT-2's end-of-document token, the one special token a trained BPE gets
BYTES = "bytes"


@dataclass(frozen=True)
class Tokenizer:
    """`name` is "bytes" or the file's path; `sha256` identifies the vocabulary (the file's hash)."""

    name: str
    sha256: str
    vocab_size: int
    eot: int | None
    model: Any = None

    def encode(self, text: str) -> np.ndarray:
        if self.model is None:
            return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)
        return np.asarray(self.model.encode(text, add_special_tokens=False).ids, dtype=np.int64)

    def encode_document(self, text: str) -> np.ndarray:
        """A document's tokens followed by the end-of-document token (bytes: a blank line)."""
        if self.eot is None:
            return self.encode(text + "\n\n")
        return np.append(self.encode(text), self.eot)


def load_tokenizer(path: str | None) -> Tokenizer:
    """The byte tokenizer (None or "bytes"), or a `tokenizer.json`."""
    if path in (None, BYTES):
        return Tokenizer(BYTES, BYTES, 256, None)
    from tokenizers import Tokenizer as HFTokenizer

    file = Path(path)
    model = HFTokenizer.from_file(str(file))
    return Tokenizer(str(file), file_sha256(file), model.get_vocab_size(), model.token_to_id(EOT), model)


def train_bpe(texts: Iterable[str], vocab_size: int, out: Path) -> Path:
    """Train a byte-level BPE of `vocab_size` tokens (GPT-2's pre-tokenisation, its 256 byte
    symbols as the alphabet, plus EOT) on `texts`; write it to `out` (tokenizer.json)."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    model = HFTokenizer(models.BPE())
    model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    model.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    model.train_from_iterator(texts, trainer=trainer)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    model.save(str(tmp))
    tmp.replace(out)
    return out


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
