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
from fltac_secure.secagg.qring import QuantRing, quant_width
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
       drops=st.lists(st.sampled_from(LATE), max_size=8), bits=st.sampled_from([2, 4, 8, 16]),
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
    assert np.all(np.abs(plain) <= len(members) * ring.levels)


def test_width_and_capacity() -> None:
    assert quant_width(8, 256) == 16 and QuantRing(8, 256, 1.0).bits == 16
    assert QuantRing(8, 257, 1.0).bits == 17 and QuantRing(4, 10, 1.0).bits == 8
    for b, n in [(2, 3), (4, 10), (8, 256), (16, 1000)]:
        assert QuantRing(b, n, 1.0).capacity() >= n
    assert QuantRing(16, 2**40, 1.0).dtype == np.uint64
    with pytest.raises(SecAggError, match="64"):
        QuantRing(16, 2**50, 1.0)


@settings(max_examples=30, deadline=None)
@given(bits=st.sampled_from([2, 4, 8, 16]), members=st.integers(1, 5000), length=st.integers(0, 70),
       seed=st.integers(0, 2**32 - 1))
def test_pack_round_trip_and_size(bits, members, length, seed) -> None:
    ring = QuantRing(bits, members, 1.0)
    vals = ring.reduce(np.random.default_rng(seed).integers(0, 2**63, length, dtype=np.uint64).astype(ring.dtype))
    packed = ring.pack(vals)
    assert packed.dtype == np.uint8 and packed.size == -(-length * ring.bits // 8) == ring.packed_nbytes(length)
    assert np.array_equal(ring.unpack(packed, length), vals)


def test_hostile_packed_and_masked_inputs_are_refused(signers, verifier) -> None:
    ring = QuantRing(4, 8, 0.1)  # 7-bit ring
    packed = ring.pack(np.arange(9, dtype=ring.dtype))  # 63 bits: one padding bit
    with pytest.raises(SecAggError, match="uint8"):
        ring.unpack(packed[:-1], 9)
    bad = packed.copy()
    bad[-1] |= 0x80
    with pytest.raises(SecAggError, match="padding"):
        ring.unpack(bad, 9)
    setup, _, _ = quant_cluster(signers, verifier, SITES[:3], ring, 0, length=9)
    with pytest.raises(SecAggError, match="wider"):
        MaskedInput("site0", np.full(9, 1 << 7, ring.dtype)).check(setup)
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
