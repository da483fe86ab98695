"""Stochastic quantisation: unbiased, packed to the size the bits imply, strict on hostile input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fltac_secure.errors import CompressionError
from fltac_secure.learning.compress import (
    BITS,
    dequantise,
    error_feedback,
    from_wire,
    levels,
    n_blocks,
    packed_nbytes,
    quantise,
    wire_nbytes,
)

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=25, deadline=None)
@given(x=arrays(np.float32, st.integers(1, 300), elements=finite), bits=st.sampled_from(BITS),
       block=st.sampled_from([8, 16, 256]), seed=st.integers(0, 2**32 - 1))
def test_mean_of_many_quantisations_converges(x, bits, block, seed):
    """The mean of m draws is within 6 standard deviations of x, from the bound var <= (s / L)^2 / 4."""
    rng = np.random.default_rng(seed)
    m = 400
    mean = np.mean([dequantise(quantise(x, bits, block, rng=rng)).astype(np.float64) for _ in range(m)], axis=0)
    scales = np.repeat(quantise(x, bits, block, rng=rng).scales.astype(np.float64), block)[: x.size]
    sd = scales / levels(bits) / 2 / np.sqrt(m)
    assert np.all(np.abs(mean - x) <= 6 * sd + 1e-6 * (np.abs(x) + 1))


@settings(max_examples=50, deadline=None)
@given(x=arrays(np.float32, st.integers(0, 200), elements=finite), bits=st.sampled_from(BITS),
       block=st.integers(8, 64), seed=st.integers(0, 2**32 - 1))
def test_round_trip_size_and_error_bound(x, bits, block, seed):
    q = quantise(x, bits, block, rng=np.random.default_rng(seed))
    assert q.packed.dtype == np.uint8 and q.packed.size == -(-x.size * bits // 8) == packed_nbytes(x.size, bits)
    assert q.scales.dtype == np.float32 and q.scales.size == n_blocks(x.size, block) == -(-x.size // block)
    assert q.nbytes == wire_nbytes(x.size, bits, block) == q.packed.size + 4 * q.scales.size
    again = from_wire(q.packed.copy(), q.scales.copy(), x.size, bits, block)
    d = dequantise(again)
    assert np.array_equal(d, dequantise(q))
    step = np.repeat(q.scales.astype(np.float64), block)[: x.size] / levels(bits)
    assert np.all(np.abs(d.astype(np.float64) - x) <= step * (1 + 1e-6) + 1e-30)


def test_extremes_are_exact_and_zero_blocks_stay_zero():
    x = np.zeros(40, np.float32)
    x[:8] = [3.0, -3.0, 1.5, 0, 0, 0, 0, 0]
    d = dequantise(quantise(x, 8, 8, rng=np.random.default_rng(0)))
    assert d[0] == 3.0 and d[1] == -3.0 and not d[8:].any()


def test_os_randomness_differs_between_calls():
    x = np.linspace(-1, 1, 1000, dtype=np.float32) + 0.0013
    assert not np.array_equal(quantise(x, 2, 64).packed, quantise(x, 2, 64).packed)


def good(n=20, bits=4, block=8):
    return quantise(np.linspace(-1, 1, n, dtype=np.float32), bits, block, rng=np.random.default_rng(1))


@pytest.mark.parametrize("change, match", [
    (lambda q: (q.packed[:-1], q.scales), "packed values"),
    (lambda q: (q.packed.astype(np.int8), q.scales), "packed values"),
    (lambda q: (q.packed, q.scales[:-1]), "scales are"),
    (lambda q: (q.packed, q.scales.astype(np.float64)), "scales are"),
    (lambda q: (q.packed, np.array([np.nan, 1, 1], np.float32)), "NaN"),
    (lambda q: (q.packed, np.array([np.inf, 1, 1], np.float32)), "NaN"),
    (lambda q: (q.packed, np.array([-1, 1, 1], np.float32)), "negative"),
    (lambda q: (np.full_like(q.packed, 0xFF), q.scales), "outside"),
])
def test_hostile_wire_input_is_refused(change, match):
    q = good()
    packed, scales = change(q)
    with pytest.raises(CompressionError, match=match):
        from_wire(packed, scales, q.n, q.bits, q.block_size)


def test_nonzero_padding_and_out_of_grid_two_bit_values_are_refused():
    q = good(n=21, bits=4)  # 21 values: the last byte holds one value and 4 padding bits
    bad = q.packed.copy()
    bad[-1] |= 0x70
    with pytest.raises(CompressionError, match="padding"):
        from_wire(bad, q.scales, 21, 4, 8)
    q2 = good(n=8, bits=2)
    with pytest.raises(CompressionError, match="outside"):
        from_wire(np.array([0b11, 0], np.uint8), q2.scales, 8, 2, 8)


def test_bad_settings_and_inputs_are_refused():
    with pytest.raises(CompressionError, match="bits"):
        quantise(np.zeros(4, np.float32), 3, 8)
    with pytest.raises(CompressionError, match="block_size"):
        quantise(np.zeros(4, np.float32), 8, 4)
    with pytest.raises(CompressionError, match="NaN"):
        quantise(np.array([np.nan], np.float32), 8, 8)


def test_error_feedback_carries_what_was_not_sent():
    rng = np.random.default_rng(3)
    u = rng.normal(size=50).astype(np.float32)
    q, res = error_feedback(u, None, 2, 8, rng=rng)
    assert np.allclose(dequantise(q) + res, u, atol=1e-6)
    q2, res2 = error_feedback(u, res, 2, 8, rng=rng)
    assert np.allclose(dequantise(q2) + res2, u + res, atol=1e-6)
    # over many rounds what was sent tracks what was meant: the sum of the sent updates minus the sum of
    # the updates is the last residual, bounded, while plain quantisation errors would random-walk
    sent, res = np.zeros(50), None
    for _ in range(200):
        q, res = error_feedback(u, res, 2, 8, rng=rng)
        sent += dequantise(q)
    assert np.allclose(sent - 200 * u.astype(np.float64), -res, atol=1e-3)
    with pytest.raises(CompressionError, match="residual"):
        error_feedback(u, np.zeros(3, np.float32), 8, 8)
