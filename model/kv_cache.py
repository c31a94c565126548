"""Key/value cache for generation, rolling when the mask has a sliding window.

Keys are cached *after* RoPE, at their absolute positions, and every slot remembers
the absolute position it holds. Attention over the cache then uses the very same
visibility predicate as the full forward pass (``masks.visible``) on those positions,
so cached decoding reproduces the full pass for causal, window and sink masks alike.

With a window W and S sinks only S + W slots are needed (StreamingLLM, Xiao et al.
2023): positions p < S live in slot p forever, later positions share a ring of W slots
(slot S + (p - S) mod W). Without a window the cache holds every position (slot p).
Unlike StreamingLLM we do not re-number positions inside the cache: keys keep their
true positions, which is what makes decoding equal to the full forward pass.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rayfleet.model.masks import MaskSpec


class KVCache:
    """Cache of one attention layer: k, v of shape (B, n_kv_heads, slots, head_dim)."""

    def __init__(self, slots: int, spec: MaskSpec) -> None:
        self.spec, self.slots = spec, slots
        # Allocated on first use with the keys' shape, dtype (autocast!) and device.
        self.k = self.v = self.pos = torch.empty(0)

    def _allocate(self, k: Tensor) -> None:
        b, h, _, d = k.shape
        self.k = k.new_zeros(b, h, self.slots, d)
        self.v = torch.zeros_like(self.k)
        # Absolute position held by each slot; -1 = empty (never visible, see masks.visible).
        self.pos = torch.full((self.slots,), -1, dtype=torch.long, device=k.device)

    def slot(self, p: int) -> int:
        """Slot that stores absolute position ``p``."""
        w, s = self.spec.window, self.spec.sinks
        if w is None or p < s:
            if p >= self.slots:
                raise ValueError(f"KV cache of {self.slots} slots cannot hold position {p}")
            return p
        return s + (p - s) % w

    def attend_and_store(self, k: Tensor, v: Tensor, start: int) -> tuple[Tensor, Tensor, Tensor]:
        """Keys, values and key positions to attend over for a chunk starting at ``start``.

        The chunk attends to the cache as it was before the chunk plus the chunk itself;
        afterwards the chunk's entries that any future query can still see are stored.
        Everything a query in the chunk may see (sinks and the last W positions) is
        either in the cache or in the chunk, so the result is exact.
        """
        if self.pos.numel() != self.slots:
            self._allocate(k)
        k, v, t = k.to(self.k.dtype), v.to(self.v.dtype), k.shape[2]
        new_pos = torch.arange(start, start + t, device=self.pos.device)
        keys = torch.cat((self.k, k), dim=2)
        values = torch.cat((self.v, v), dim=2)
        positions = torch.cat((self.pos, new_pos))
        # Store: with a window, only sinks and the last W positions of the chunk survive
        # (storing all would write several positions into the same ring slot).
        last = start + t - 1
        keep = [p for p in range(start, start + t)
                if self.spec.window is None or p < self.spec.sinks or last - p < self.spec.window]
        slots = torch.tensor([self.slot(p) for p in keep], device=self.pos.device)
        src = torch.tensor([p - start for p in keep], device=self.pos.device)
        self.k[:, :, slots] = k[:, :, src]
        self.v[:, :, slots] = v[:, :, src]
        self.pos[slots] = new_pos[src]
        return keys, values, positions
