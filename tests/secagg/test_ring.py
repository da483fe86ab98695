"""The fixed-point ring: round trips within the stated bound, and the capacity that keeps sums from wrapping."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fltac_secure.errors import SecAggError
from fltac_secure.secagg import Ring, max_fractional_bits

rings = st.builds(
    lambda bits, clip_exp, f_gap: Ring(bits, min(bits - 2, max(1, bits - 2 - clip_exp - f_gap)), 2.0**clip_exp),
    st.sampled_from([32, 64]), st.integers(-4, 6), st.integers(0, 12),
)  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(rings, st.data())
def test_encode_decode_round_trip_within_half_a_step(ring: Ring, data: st.DataObject) -> None:
    vec = data.draw(arrays(np.float64, st.integers(1, 50), elements=st.floats(-ring.clip, ring.clip)))
    back = ring.decode(ring.encode(vec))
    assert np.max(np.abs(back - vec)) <= ring.error_bound(1)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([32, 64]), st.integers(-3, 5), st.integers(1, 300), st.data())
def test_sum_of_members_never_wraps_and_stays_within_the_bound(bits: int, clip_exp: int, members: int,
                                                               data: st.DataObject) -> None:  # fmt: skip
    clip = 2.0**clip_exp
    f = max_fractional_bits(bits, clip, members)
    assert f >= 1
    ring = Ring(bits, f, clip)
    assert ring.capacity() >= members
    # worst case for wrapping: every member at +clip (or -clip) in full weight
    sign = data.draw(st.sampled_from([1.0, -1.0]))
    vecs = [np.full(3, sign * clip) for _ in range(members)]
    vecs[0] = data.draw(arrays(np.float64, 3, elements=st.floats(-clip, clip)))
    total = np.zeros(3, dtype=ring.dtype)
    for v in vecs:
        total += ring.encode(v)
    exact = np.array([math.fsum(v[i] for v in vecs) for i in range(3)])
    assert np.max(np.abs(ring.decode(total) - exact)) <= ring.error_bound(members)


def test_one_more_member_than_the_capacity_can_wrap() -> None:
    ring = Ring(32, 24, 8.0)
    n = ring.capacity() + 1
    total = np.zeros(1, dtype=ring.dtype)
    for _ in range(n + 1):  # the bound is conservative by the rounding margin; one more makes it wrap
        total += ring.encode(np.array([8.0]))
    assert ring.decode(total)[0] < 0  # wrapped: the sum of positives decodes negative
    assert max_fractional_bits(32, 8.0, n) < 24


def test_weighted_sums_a_members_slots_and_counts_clipped_entries() -> None:
    ring = Ring(32, 20, 1.0)
    out, clipped = ring.weighted([np.array([0.5, 3.0]), np.array([-0.25, -0.5])], [1.0, 3.0], 8.0)
    assert clipped == 1
    assert np.allclose(out, [0.5 / 8 - 0.75 / 8, 1.0 / 8 - 1.5 / 8])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"bits": 16}, "32 or 64"), ({"clip": 0.0}, "positive"), ({"clip": float("nan")}, "positive"),
     ({"fractional_bits": 31}, r"\[1, 30\]"), ({"fractional_bits": 28, "clip": 16.0}, "does not fit")],
)  # fmt: skip
def test_bad_rings_are_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(SecAggError, match=match):
        Ring(**kwargs)


def test_encode_refuses_non_finite_and_out_of_range_values() -> None:
    ring = Ring(32, 20, 1.0)
    with pytest.raises(SecAggError, match="NaN or Inf"):
        ring.encode(np.array([np.nan]))
    with pytest.raises(SecAggError, match="clip range"):
        ring.encode(np.array([1.5]))
    with pytest.raises(SecAggError, match="dtype"):
        ring.decode(np.zeros(2, dtype=np.uint64))
