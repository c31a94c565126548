"""RoPE is relative, its scaling does what is documented, ALiBi and sinusoidal match
their papers."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rayfleet.model.positions import (
    alibi_bias,
    alibi_slopes,
    apply_rope,
    rope_angles,
    rope_inv_freq,
    sinusoidal_embedding,
)

from tests.model.reference import ref_rope, ref_sinusoidal, ref_slopes

FAST = settings(deadline=None, max_examples=40, derandomize=True)


def rotate(x: torch.Tensor, p: int, inv_freq: torch.Tensor) -> torch.Tensor:
    cos, sin = rope_angles(torch.tensor([p]), inv_freq)
    return apply_rope(x.view(1, 1, 1, -1), cos, sin).view(-1)


@FAST
@given(m=st.integers(0, 5000), n=st.integers(0, 5000), shift=st.integers(-5000, 5000),
       scaling=st.sampled_from([1.0, 4.0]), kind=st.sampled_from(["linear", "ntk"]))
def test_rope_score_depends_only_on_relative_position(m: int, n: int, shift: int,
                                                      scaling: float, kind: str) -> None:
    shift = max(shift, -min(m, n))
    g = torch.Generator().manual_seed(m * 7919 + n)
    q, k = torch.randn(32, dtype=torch.float64, generator=g), torch.randn(32, dtype=torch.float64, generator=g)
    inv_freq = rope_inv_freq(32, 10000.0, scaling, kind)
    s1 = rotate(q, m, inv_freq) @ rotate(k, n, inv_freq)
    s2 = rotate(q, m + shift, inv_freq) @ rotate(k, n + shift, inv_freq)
    torch.testing.assert_close(s1, s2, atol=1e-9, rtol=1e-9)


def test_rope_is_not_trivially_invariant() -> None:
    """Sanity for the test above: the score does change with the relative distance."""
    q, k = torch.randn(32, dtype=torch.float64), torch.randn(32, dtype=torch.float64)
    inv_freq = rope_inv_freq(32, 10000.0)
    assert abs(rotate(q, 3, inv_freq) @ rotate(k, 0, inv_freq) - rotate(q, 0, inv_freq) @ rotate(k, 0, inv_freq)) > 1e-3


def test_rope_matches_complex_reference() -> None:
    x = torch.randn(2, 3, 11, 16, dtype=torch.float64)
    pos = torch.arange(100, 111)
    cos, sin = rope_angles(pos, rope_inv_freq(16, 500.0))
    torch.testing.assert_close(apply_rope(x, cos, sin), ref_rope(x, pos, 500.0))


def test_linear_rope_scaling_interpolates_positions() -> None:
    """Position interpolation (Chen et al. 2023): position p with factor s rotates like p / s."""
    s = 4.0
    scaled, plain = rope_inv_freq(64, 10000.0, s, "linear"), rope_inv_freq(64, 10000.0)
    pos = torch.arange(0, 4096, 7)
    cos_s, sin_s = rope_angles(pos, scaled)
    angles = (pos.double() / s)[:, None] * plain
    torch.testing.assert_close(cos_s, angles.cos())
    torch.testing.assert_close(sin_s, angles.sin())
    x = torch.randn(1, 1, len(pos), 64, dtype=torch.float64)
    torch.testing.assert_close(apply_rope(x, cos_s, sin_s), ref_rope(x, pos, 10000.0, scale=s))


def test_ntk_rope_scaling_changes_the_base() -> None:
    """NTK-aware: base' = base * s^(d/(d-2)); theta_0 unchanged, lowest frequency / s."""
    d, s, base = 64, 8.0, 10000.0
    ntk, plain = rope_inv_freq(d, base, s, "ntk"), rope_inv_freq(d, base)
    new_base = base * s ** (d / (d - 2))
    torch.testing.assert_close(ntk, torch.tensor([new_base ** (-2 * i / d) for i in range(d // 2)],
                                                 dtype=torch.float64))
    assert ntk[0] == plain[0] == 1.0
    torch.testing.assert_close(ntk[-1], plain[-1] / s)
    assert (ntk[1:] < plain[1:]).all()


def test_alibi_slopes_power_of_two_by_hand() -> None:
    # Press et al. 2021: for 8 heads the slopes are 1/2, 1/4, ..., 1/256.
    assert alibi_slopes(8).tolist() == [2.0 ** -i for i in range(1, 9)]
    assert alibi_slopes(4).tolist() == [2.0 ** -(2 * i) for i in range(1, 5)]


def test_alibi_slopes_other_head_counts() -> None:
    # 6 heads: the 4-head slopes, then every other slope of the 8-head sequence.
    assert alibi_slopes(6).tolist() == [1 / 4, 1 / 16, 1 / 64, 1 / 256, 1 / 2, 1 / 8]
    for n in (3, 5, 6, 7, 12, 20, 24):
        torch.testing.assert_close(alibi_slopes(n), torch.tensor(ref_slopes(n), dtype=torch.float32))


def test_alibi_bias_equals_reference() -> None:
    slopes = alibi_slopes(4)
    pos = torch.arange(6)
    bias = alibi_bias(pos, pos, slopes)
    for h in range(4):
        for i in range(6):
            for j in range(i + 1):
                assert math.isclose(bias[h, i, j].item(), -slopes[h].item() * (i - j))
    assert torch.equal(bias[:, 3, 3], torch.zeros(4))


def test_sinusoidal_matches_vaswani_formula() -> None:
    for d in (16, 15):
        torch.testing.assert_close(sinusoidal_embedding(torch.arange(50), d).double(),
                                   ref_sinusoidal(50, d), atol=1e-5, rtol=1e-5)


def test_rope_table_equals_angles_computed_per_call_and_stays_float64() -> None:
    """The tabled cos/sin (what a training step reads) equal the per-call float64 angles, past
    the table too, and survive a cast of the model to bf16 unrounded."""
    from rayfleet.model import ModelConfig
    from rayfleet.model.positions import Positions

    positions = Positions(ModelConfig(max_seq_len=64, positions="rope")).to(torch.bfloat16)
    for start, length in ((0, 64), (10, 20), (60, 10), (100, 5)):  # the last two leave the table
        pos = torch.arange(start, start + length)
        got, want = positions.rope_span(start, length), positions.rope(pos)
        assert got is not None and want is not None
        for g, w in zip(got, want):
            assert g.dtype == torch.float64
            torch.testing.assert_close(g, w, atol=0, rtol=0)
