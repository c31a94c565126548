"""The sliding-window and sink masks have exactly the intended pattern."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rayfleet.model.masks import MaskSpec, additive_mask, dense_mask, mask_mod

from tests.model.reference import ref_mask

FAST = settings(deadline=None, max_examples=60, derandomize=True)


def test_window_and_sinks_pattern_by_hand() -> None:
    # T=7, W=3, S=1: row q sees key 0 (sink) and keys q-2..q.
    expected = torch.tensor([
        [1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0],
        [1, 0, 1, 1, 1, 0, 0],
        [1, 0, 0, 1, 1, 1, 0],
        [1, 0, 0, 0, 1, 1, 1],
    ], dtype=torch.bool)
    pos = torch.arange(7)
    assert torch.equal(dense_mask(pos, pos, MaskSpec(window=3, sinks=1)), expected)


def test_window_without_sinks_by_hand() -> None:
    expected = torch.tensor([
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [0, 1, 1, 0, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 0, 1, 1],
    ], dtype=torch.bool)
    pos = torch.arange(5)
    assert torch.equal(dense_mask(pos, pos, MaskSpec(window=2)), expected)


def test_causal_is_lower_triangular() -> None:
    pos = torch.arange(9)
    assert torch.equal(dense_mask(pos, pos, MaskSpec()), torch.ones(9, 9, dtype=torch.bool).tril())
    assert torch.equal(dense_mask(pos, pos, MaskSpec(sinks=3)), torch.ones(9, 9, dtype=torch.bool).tril())


@FAST
@given(t=st.integers(1, 20), window=st.none() | st.integers(1, 22), sinks=st.integers(0, 5),
       offset=st.integers(0, 30))
def test_dense_mask_matches_definition(t: int, window: int | None, sinks: int, offset: int) -> None:
    q = list(range(offset, offset + t))
    k = list(range(offset + t))
    got = dense_mask(torch.tensor(q), torch.tensor(k), MaskSpec(window, sinks))
    assert torch.equal(got, ref_mask(q, k, window, sinks))


@FAST
@given(t=st.integers(1, 12), window=st.integers(1, 14), sinks=st.integers(0, 3))
def test_every_row_sees_itself_and_at_most_window_plus_sinks(t: int, window: int, sinks: int) -> None:
    pos = torch.arange(t)
    m = dense_mask(pos, pos, MaskSpec(window, sinks))
    assert m.diagonal().all()
    assert (m.sum(-1) <= window + sinks).all()
    # row q: min(q+1, W) keys of the window plus the sinks that lie before the window
    expected = [min(q + 1, window) + min(sinks, max(0, q + 1 - window)) for q in range(t)]
    assert m.sum(-1).tolist() == expected


def test_empty_cache_slots_are_never_visible() -> None:
    k = torch.tensor([-1, 0, 1, -1])
    m = dense_mask(torch.tensor([1]), k, MaskSpec(window=4, sinks=2))
    assert m.tolist() == [[False, True, True, False]]


def test_mask_mod_matches_dense_mask_with_offset() -> None:
    spec = MaskSpec(window=3, sinks=2)
    mod = mask_mod(spec, q_offset=4)
    q, k = torch.arange(3)[:, None], torch.arange(7)[None, :]
    got = mod(torch.tensor(0), torch.tensor(0), q, k)
    assert torch.equal(got, dense_mask(torch.arange(4, 7), torch.arange(7), spec))


def test_additive_mask_puts_bias_where_visible_and_minus_inf_elsewhere() -> None:
    mask = torch.tensor([[True, False], [True, True]])
    bias = torch.tensor([[0.5, 9.0], [-1.0, 0.0]])
    out = additive_mask(mask, bias, torch.float32)
    assert out[0, 0] == 0.5 and out[0, 1] == float("-inf") and out[1, 0] == -1.0
    assert torch.equal(additive_mask(mask, None, torch.float32).isinf(), ~mask)


def test_global_queries_ignore_the_window() -> None:
    # RMT write memory: queries from position 5 on see every earlier key despite W=2
    pos = torch.arange(7)
    m = dense_mask(pos, pos, MaskSpec(window=2, sinks=1, global_from=5))
    assert torch.equal(m[5:], torch.ones(7, 7, dtype=torch.bool).tril()[5:])
    assert torch.equal(m[:5], dense_mask(pos, pos, MaskSpec(window=2, sinks=1))[:5])
