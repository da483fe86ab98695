"""Quantised updates under secure aggregation: cluster sums equal the plain quantised sums exactly."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fltac_secure.errors import SecAggError
from fltac_secure.secagg import (
    ClientSession,
    Context,
    ServerSession,
    Setup,
    Stage,
    run_cluster,
    threshold_for,
)
from fltac_secure.secagg.qring import QuantRing, grid_levels, min_secure_bits
from fltac_secure.secagg.records import MaskedInput

from .conftest import ROWS, SITES

LATE = [Stage.SHARE, Stage.MASK, Stage.CONSISTENCY, Stage.UNMASK]


def quant_cluster(signers, verifier, members, ring, seed, length=40, fraction=2 / 3):
    rng = np.random.default_rng(seed)
    updates = {m: rng.uniform(-1.5, 1.5, length) * ring.clip for m in members}  # some beyond the clip
    weights = {m: float(rng.integers(1, 50)) for m in members}
    setup = Setup(Context("planhash", 2, 0, 0), tuple(members), tuple(weights[m] for m in members),
                  threshold_for(len(members), fraction), ring, length)  # fmt: skip
    clients = {m: ClientSession(setup, signers[m], verifier, [updates[m]], [weights[m]], **ROWS,
                                rng=np.random.default_rng([seed, i]))
               for i, m in enumerate(members)}  # fmt: skip
    ints = {}  # the plain quantised integers each member fed in: the same draws again
    for i, m in enumerate(members):
        weighted, _ = ring.weighted([updates[m]], [weights[m]], setup.total_weight)
        ints[m] = ring.signed(ring.encode(weighted, np.random.default_rng([seed, i])))
    return setup, clients, ints


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(members=st.lists(st.sampled_from(SITES), min_size=2, max_size=8, unique=True),
       drops=st.lists(st.sampled_from(LATE), max_size=8), bits=st.sampled_from([8, 16]),
       seed=st.integers(0, 2**16))
def test_cluster_sum_equals_the_plain_quantised_sum_exactly(signers, verifier, members, drops, bits, seed) -> None:
    ring = QuantRing(bits, len(SITES), 0.05)
    setup, clients, ints = quant_cluster(signers, verifier, members, ring, seed)
    drop = dict(zip(members, drops, strict=False))
    res = run_cluster(ServerSession(setup, verifier), clients, drop).result
    if res.skipped:
        return
    plain = sum(ints[m] for m in res.survivors)
    assert np.array_equal(res.total, plain.astype(np.float64) * (ring.clip / ring.levels))
    assert np.all(np.abs(plain) <= ring.levels + len(SITES))  # the weights sum to one: never beyond L + n


def test_width_grid_and_capacity() -> None:
    """The ring is exactly the value bits; the grid gives up one step per possible member."""
    assert QuantRing(8, 10, 1.0).bits == 8 and QuantRing(8, 10, 1.0).levels == 117 == grid_levels(8, 10)
    assert QuantRing(16, 256, 1.0).levels == 2**15 - 1 - 256 and QuantRing(4, 6, 1.0).levels == 1
    for b, n in [(4, 3), (8, 10), (8, 126), (16, 1000)]:
        ring = QuantRing(b, n, 1.0)
        assert ring.capacity() == n and ring.levels + n == 2 ** (b - 1) - 1 and ring.dtype == np.uint32
    assert [min_secure_bits(n) for n in (1, 6, 7, 126, 127, 2**15 - 2, 2**15 - 1)] == [4, 4, 8, 8, 16, 16, None]


@pytest.mark.parametrize(("bits", "members", "fix"), [(2, 1, "at least 4 bits"), (4, 7, "at least 8 bits"),
                                                      (4, 10, "at least 8 bits"), (8, 127, "at least 16 bits"),
                                                      (16, 2**15, "no supported width")])
def test_a_ring_too_narrow_for_the_roster_is_refused(bits, members, fix) -> None:
    with pytest.raises(SecAggError, match=fix):
        QuantRing(bits, members, 1.0)


class AwayFromZero:
    """A rounding draw that always rounds away from zero: up for positive values (0), down for negative (~1)."""

    def __init__(self, sign: float) -> None:
        self.u = 0.0 if sign > 0 else 1 - 1e-12

    def random(self, shape) -> np.ndarray:
        return np.full(shape, self.u)


@settings(max_examples=40, deadline=None)
@given(bits=st.sampled_from([4, 8]), data=st.data())
def test_members_at_their_full_share_never_wrap_the_ring(bits, data) -> None:
    """The worst honest case: every member's entries at +-clip (after clipping) times its weight share, every
    rounding away from zero; the ring sum still decodes to the right sign, within one step per member."""
    n = data.draw(st.integers(1, 2 ** (bits - 1) - 2))
    ring = QuantRing(bits, n, 0.1)
    weights = data.draw(st.lists(st.floats(0.01, 100), min_size=1, max_size=n))
    sign = data.draw(st.sampled_from([-1.0, 1.0]))
    total, exact = np.zeros(16, dtype=ring.dtype), np.zeros(16)
    for w in weights:
        weighted, _ = ring.weighted([np.full(16, 5 * sign * ring.clip)], [w], float(sum(weights)))
        exact += weighted
        total = ring.reduce(total + ring.encode(weighted, AwayFromZero(sign)))
    got = ring.decode(total)
    assert np.all(np.sign(got) == sign)
    assert np.all(np.abs(got - exact) <= len(weights) * ring.clip / ring.levels + 1e-12)


@settings(max_examples=30, deadline=None)
@given(bits=st.sampled_from([4, 8, 16]), members=st.integers(1, 6), length=st.integers(0, 70),
       seed=st.integers(0, 2**32 - 1))
def test_pack_round_trip_and_size(bits, members, length, seed) -> None:
    ring = QuantRing(bits, members, 1.0)
    vals = ring.reduce(np.random.default_rng(seed).integers(0, 2**63, length, dtype=np.uint64).astype(ring.dtype))
    packed = ring.pack(vals)
    assert packed.dtype == np.uint8 and packed.size == -(-length * ring.bits // 8) == ring.packed_nbytes(length)
    assert np.array_equal(ring.unpack(packed, length), vals)


def test_hostile_packed_and_masked_inputs_are_refused(signers, verifier) -> None:
    ring = QuantRing(4, 3, 0.1)  # 4-bit ring, 4 steps per clip
    packed = ring.pack(np.arange(9, dtype=ring.dtype))  # 36 bits: four padding bits
    with pytest.raises(SecAggError, match="uint8"):
        ring.unpack(packed[:-1], 9)
    bad = packed.copy()
    bad[-1] |= 0x80
    with pytest.raises(SecAggError, match="padding"):
        ring.unpack(bad, 9)
    setup, _, _ = quant_cluster(signers, verifier, SITES[:3], ring, 0, length=9)
    with pytest.raises(SecAggError, match="wider"):
        MaskedInput("site0", np.full(9, 1 << 4, ring.dtype)).check(setup)
    with pytest.raises(SecAggError, match="exceeds"):
        ring.encode(np.array([0.2]))


def test_local_runs_count_the_packed_upload(signers, verifier) -> None:
    ring = QuantRing(8, len(SITES), 0.05)
    setup, clients, _ = quant_cluster(signers, verifier, SITES[:3], ring, 1, length=100)
    run = run_cluster(ServerSession(setup, verifier), clients)
    from fltac_secure.secagg.local import record_bytes

    masked = MaskedInput("site0", np.zeros(100, ring.dtype))
    assert record_bytes(masked, ring) == -(-100 * ring.bits // 8) + len("site0")
    assert all(v > 0 for v in run.upload.values())
