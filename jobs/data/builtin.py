"""The built-in corpus: the Python Language Reference as `pydoc_data.topics` ships it with every
CPython (79 topics, ~466 KB of English prose and code), so the demo and the tests need no
download. Tokens are its UTF-8 bytes (a vocabulary of 256)."""
from __future__ import annotations

import functools

import numpy as np

CORPORA = ("python-docs",)


@functools.lru_cache(maxsize=None)
def corpus_bytes(name: str = "python-docs") -> np.ndarray:
    """The whole corpus as uint8 byte values."""
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}; available: {', '.join(CORPORA)}")
    import pydoc_data.topics

    text = "\n\n".join(pydoc_data.topics.topics[key] for key in sorted(pydoc_data.topics.topics))
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
