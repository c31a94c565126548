"""Attention visibility: causal, sliding window of W tokens, and attention sinks.

One predicate, written with tensor ops only, defines the pattern everywhere: it builds
the dense boolean mask for SDPA, it is the ``mask_mod`` of flex_attention block masks,
and it masks KV-cache slots by the absolute positions they hold. Using one definition
is what makes the fused kernels, the reference and cached decoding agree.

Query at absolute position q may attend to key position k iff
    0 <= k <= q  and  (W is None  or  q - k < W  or  k < S)
i.e. the window holds the W most recent tokens including the query itself, and the
first S tokens ("attention sinks", Xiao et al. 2023, StreamingLLM) stay visible. Sinks
only matter together with a window: with full causal attention everything is visible.
Negative key positions mark empty cache slots and are never visible. Queries at
positions >= ``global_from`` ignore the window (the write-memory tokens of a recurrent
memory segment must summarise the whole segment, see memory.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor


@dataclass(frozen=True)
class MaskSpec:
    """The static part of a mask: window W (None = unbounded), sinks S, global queries."""

    window: int | None = None
    sinks: int = 0
    global_from: int | None = None  # queries at positions >= this see all earlier keys

    @property
    def is_causal_only(self) -> bool:
        """True when the pattern is plain causal, so SDPA's ``is_causal`` fast path applies."""
        return self.window is None

    @property
    def cache_slots(self) -> int | None:
        """KV-cache capacity that suffices for any sequence length (None = unbounded)."""
        return None if self.window is None else self.sinks + self.window


def visible(q_pos: Tensor, k_pos: Tensor, spec: MaskSpec) -> Tensor:
    """Elementwise visibility of key positions ``k_pos`` from query positions ``q_pos``.

    Broadcasts like any binary op, so it works on (Tq, 1) x (1, Tk) grids and on the
    scalar index tensors that flex_attention's ``mask_mod`` receives.
    """
    ok = (k_pos <= q_pos) & (k_pos >= 0)
    if spec.window is not None:
        in_window = (q_pos - k_pos) < spec.window
        if spec.sinks > 0:
            in_window = in_window | (k_pos < spec.sinks)
        if spec.global_from is not None:
            in_window = in_window | (q_pos >= spec.global_from)
        ok = ok & in_window
    return ok


def dense_mask(q_pos: Tensor, k_pos: Tensor, spec: MaskSpec) -> Tensor:
    """Boolean (Tq, Tk) mask, True = may attend, for 1-D position vectors."""
    return visible(q_pos[:, None], k_pos[None, :], spec)


def mask_mod(spec: MaskSpec, q_offset: int = 0) -> Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]:
    """flex_attention ``mask_mod(b, h, q_idx, kv_idx)`` for ``spec``.

    ``q_offset`` shifts query indices when queries are the last rows of a longer key
    sequence (chunked prefill); keys are indexed from position 0.
    """

    def mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return visible(q_idx + q_offset, kv_idx, spec)

    return mod


def additive_mask(mask: Tensor, bias: Tensor | None, dtype: torch.dtype) -> Tensor:
    """Float mask for SDPA: ``bias`` where visible, -inf elsewhere (bias may be None)."""
    neg_inf = torch.tensor(float("-inf"), dtype=dtype, device=mask.device)
    if bias is None:
        return torch.where(mask, torch.zeros((), dtype=dtype, device=mask.device), neg_inf)
    return torch.where(mask, bias.to(dtype), neg_inf)
