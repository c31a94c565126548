"""An in-memory GCS KV store with the calls of Ray's GCS client that `cluster/rayio/gcs.py` makes.

The simulator persists its controller's state through the production `FleetStore` over this
store, and tests count what a pass writes through it: every put and delete is tallied (calls and
bytes of keys and values), as they would travel to the GCS.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class KVTally:
    """Calls and bytes sent to the store (keys and values as sent; a delete sends its key)."""

    puts: int = 0
    deletes: int = 0
    bytes: int = 0

    def since(self, earlier: KVTally) -> KVTally:
        return KVTally(self.puts - earlier.puts, self.deletes - earlier.deletes, self.bytes - earlier.bytes)


@dataclass
class MemoryKV:
    """Keys (bytes) per namespace (bytes or None), as Ray's GcsClient holds them."""

    data: dict[tuple[Any, bytes], bytes] = field(default_factory=dict)
    tally: KVTally = field(default_factory=KVTally)
    fail_puts_after: int | None = None  # tests: puts that succeed before every later put raises

    def internal_kv_put(self, key: bytes, value: bytes, overwrite: bool = False, namespace: Any = None,
                        timeout: float | None = None) -> int:
        if self.fail_puts_after is not None:
            if self.fail_puts_after <= 0:
                raise ConnectionError("simulated GCS failure")
            self.fail_puts_after -= 1
        self.tally.puts += 1
        self.tally.bytes += len(key) + len(value)
        new = (namespace, key) not in self.data
        if new or overwrite:
            self.data[(namespace, key)] = value
        return int(new)

    def internal_kv_get(self, key: bytes, namespace: Any = None, timeout: float | None = None) -> bytes | None:
        return self.data.get((namespace, key))

    def internal_kv_multi_get(self, keys: list[bytes], namespace: Any = None,
                              timeout: float | None = None) -> dict[bytes, bytes]:
        return {key: self.data[(namespace, key)] for key in keys if (namespace, key) in self.data}

    def internal_kv_exists(self, key: bytes, namespace: Any = None, timeout: float | None = None) -> bool:
        return (namespace, key) in self.data

    def internal_kv_keys(self, prefix: bytes, namespace: Any = None, timeout: float | None = None) -> list[bytes]:
        return [key for space, key in self.data if space == namespace and key.startswith(prefix)]

    def internal_kv_del(self, key: bytes, del_by_prefix: bool, namespace: Any = None,
                        timeout: float | None = None) -> int:
        self.tally.deletes += 1
        self.tally.bytes += len(key)
        gone = [k for k in self.data if k[0] == namespace and (k[1].startswith(key) if del_by_prefix else k[1] == key)]
        for k in gone:
            del self.data[k]
        return len(gone)
