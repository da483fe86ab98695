"""Quantised updates in the simulator: off is bit for bit the old path; on, the server averages start + dequant."""

from __future__ import annotations

import numpy as np
import pytest

from fltac_secure.federation.compressed import compress_results, rebuild_vectors, update_nbytes
from fltac_secure.learning.adapters import adapter_layout
from fltac_secure.learning.compress import dequantise, levels, wire_nbytes
from fltac_secure.secagg.qring import grid_levels
from fltac_secure.simulation import SimContext
from fltac_secure.simulation.methods import FLTAC


def with_compression(plan, **c):
    from fltac_secure.plan.schema import Compression

    return plan.model_copy(update={"compression": Compression(**c), "rounds": 2,
                                   "training": plan.training.model_copy(update={"local_steps": 5})})


def run(plan, data, rounds=2, rngs=None):
    method = FLTAC(SimContext(plan, data))
    if rngs is not None:
        method.compression_rngs = {s: np.random.default_rng(rngs + i) for i, s in enumerate(method.ctx.sites)}
    outcomes = [method.run_round(r) for r in range(rounds)]
    return method, outcomes


@pytest.fixture(scope="module")
def off(plan, data):
    return run(with_compression(plan), data)


def test_bits_32_is_the_old_path_bit_for_bit(plan, data, off):
    """An explicit section at 32 bits (with error feedback asked for) changes nothing: the same vectors, bit for bit."""
    method, outcomes = off
    other, _ = run(with_compression(plan, bits=32, block_size=8, error_feedback=True), data)
    assert method.state.vectors.keys() == other.state.vectors.keys()
    assert all(np.array_equal(method.state.vectors[k], other.state.vectors[k]) for k in method.state.vectors)
    assert not other.residuals
    d = adapter_layout(plan).size
    n = len(method.state.vectors)
    assert outcomes[0].bits == 32 and outcomes[0].up_bytes == n * (4 * d + 8 * plan.clustering.sketch_dim + 8)


def test_eight_bits_with_error_feedback(plan, data, off):
    p = with_compression(plan, bits=8, block_size=64, error_feedback=True)
    a, outs = run(p, data, rngs=7)
    b, _ = run(p, data, rngs=7)
    keys = sorted(a.state.vectors)
    assert all(np.array_equal(a.state.vectors[k], b.state.vectors[k]) for k in keys)  # same draws, same result
    ref = off[0].state.vectors
    assert not all(np.array_equal(a.state.vectors[k], ref[k]) for k in keys)  # rounding changed something ...
    assert max(float(np.abs(a.state.vectors[k] - ref[k]).max()) for k in keys) < 0.05  # ... by little
    assert sorted(a.residuals) == keys and all(a.residuals[k].dtype == np.float32 for k in keys)
    d = adapter_layout(p).size
    assert outs[1].bits == 8
    assert outs[1].up_bytes == len(keys) * (wire_nbytes(d, 8, 64) + 8 * p.clustering.sketch_dim + 8)
    assert update_nbytes(p, d) == d + 4 * -(-d // 64) < 4 * d / 3  # a byte per number plus the block scales
    assert outs[1].up_params == off[1][1].up_params  # parameters are counted as before


def test_site_and_server_halves_agree(plan):
    p = with_compression(plan, bits=4, block_size=16, error_feedback=True)
    rng = np.random.default_rng(0)
    starts = {"s/0": rng.normal(size=100).astype(np.float32), "s/1": np.zeros(100, np.float32)}
    trained = {k: v + rng.normal(scale=0.1, size=100).astype(np.float32) for k, v in starts.items()}
    sent = compress_results(p, trained, starts, {}, rng=rng)
    rebuilt = rebuild_vectors(starts, {k: u.q for k, u in sent.items()})
    for k in trained:  # what the server rebuilt plus what the site kept back is what the site trained
        assert np.allclose(rebuilt[k] + sent[k].residual, trained[k], atol=1e-5)
        step = np.repeat(sent[k].q.scales, 16)[:100] / levels(4)
        assert np.all(np.abs(sent[k].residual) <= step * (1 + 1e-5))
    again = compress_results(p, trained, starts, {k: u.residual for k, u in sent.items()}, rng=rng)
    for k in trained:
        update = trained[k] - starts[k]
        assert np.allclose(dequantise(again[k].q) + again[k].residual, update + sent[k].residual, atol=1e-5)


def test_with_secure_aggregation_the_cluster_means_are_start_plus_quantised_updates(plan, data):
    """Under secure aggregation each cluster sums its members' quantised updates in the narrow ring and the
    server adds back the starts: the same draws give the same result, close to the plain secure run."""
    from fltac_secure.plan.schema import Plan

    def secure(**c):
        raw = with_compression(plan, **c).model_dump()
        return Plan.model_validate({**raw, "secure_aggregation": {"enabled": True}})

    exact, _ = run(secure(), data, rounds=1)
    p8 = secure(bits=8, secure_clip=0.2)
    a, outs = run(p8, data, rounds=1, rngs=11)
    b, _ = run(p8, data, rounds=1, rngs=11)
    keys = sorted(a.state.vectors)
    assert all(np.array_equal(a.state.vectors[k], b.state.vectors[k]) for k in keys)
    diff = max(float(np.abs(a.state.vectors[k] - exact.state.vectors[k]).max()) for k in keys)
    step = 0.2 / grid_levels(8, len(p8.roster))  # the common grid: 2^7 - 1 - sites steps per secure_clip
    assert 0 < diff < 4 * step  # a few grid steps at most (one rounding per member, averaged)
    d = adapter_layout(p8).size
    assert outs[0].up_bytes == len(keys) * (-(-d * 8 // 8) + 8 * p8.clustering.sketch_dim + 8)  # 8 bits per value
    _, plain = run(with_compression(plan, bits=8, secure_clip=0.2), data, rounds=1, rngs=11)
    assert outs[0].up_bytes < plain[0].up_bytes  # masked: no wider than the plain upload, and no block scales
