"""Quantised downloads (compression.download_bits): what the server sends and what a site starts from."""

from __future__ import annotations

import numpy as np
import pytest

from fltac_secure.errors import CompressionError, StateError
from fltac_secure.federation.compressed import ROUNDING_KEY_BYTES, Downlink, keep_exact, new_rounding_key
from fltac_secure.federation.rounds import ServerState
from fltac_secure.federation.trimmed import Trimmer
from fltac_secure.learning.compress import levels
from fltac_secure.plan import plan_hash
from fltac_secure.plan.schema import Compression

KEY = bytes(range(ROUNDING_KEY_BYTES))


def with_download(plan, bits=8, **c):
    return plan.model_copy(update={"compression": Compression(download_bits=bits, block_size=32, **c)})


def test_off_by_default_and_hash_unchanged(plan) -> None:
    assert not plan.compression.download and new_rounding_key(plan) is None
    explicit = plan.model_copy(update={"compression": Compression(download_bits=32)})
    assert plan_hash(explicit) == plan_hash(plan)
    assert plan_hash(with_download(plan)) != plan_hash(plan)
    with pytest.raises(CompressionError, match="download_bits is 32"):
        Downlink.of(plan)
    assert len(new_rounding_key(with_download(plan))) == ROUNDING_KEY_BYTES


def test_a_site_rebuilds_what_the_server_holds_within_the_rounding_step(plan) -> None:
    p = with_download(plan)
    down = Downlink.of(p)
    init = down.trimmer.init
    vec = init + np.random.default_rng(0).normal(0, 0.05, init.shape).astype(np.float32)
    q = down.send(KEY, 3, "s1/0", vec, None)
    got = down.receive(q, None)
    step = np.repeat(q.scales, 32)[: init.size] / levels(8)
    assert np.all(np.abs(got - vec) <= step + 1e-6)
    np.testing.assert_array_equal(down.receive(down.send(KEY, 3, "s1/0", init, None), None), init)  # round 0: exact


def test_the_draws_come_from_the_key_round_and_slot(plan) -> None:
    down = Downlink.of(with_download(plan, bits=4))
    vec = down.trimmer.init + np.random.default_rng(1).normal(0, 0.05, down.trimmer.init.shape).astype(np.float32)
    same = [down.send(KEY, 1, "s1/0", vec, None).packed for _ in range(2)]
    np.testing.assert_array_equal(*same)  # a ROUND_START sent again is the same bytes
    for other in (down.send(bytes(32), 1, "s1/0", vec, None), down.send(KEY, 2, "s1/0", vec, None),
                  down.send(KEY, 1, "s1/1", vec, None)):
        assert not np.array_equal(other.packed, same[0])


def test_unbiased_over_rounds(plan) -> None:
    """The mean of many rounds' starts converges to the server's vector (per-entry sd <= step / 2)."""
    down = Downlink.of(with_download(plan, bits=2))
    init = down.trimmer.init
    vec = init + np.random.default_rng(2).normal(0, 0.05, init.shape).astype(np.float32)
    n = 400
    starts = np.stack([down.receive(down.send(KEY, r, "s/0", vec, None), None) for r in range(n)])
    q = down.send(KEY, 0, "s/0", vec, None)
    step = np.repeat(q.scales, 32)[: init.size] / levels(2)
    assert np.all(np.abs(starts.mean(0) - vec) <= 5 * (step / 2) / np.sqrt(n) + 1e-6)


def test_trimmed_slots_send_their_wire_part(plan) -> None:
    p = with_download(plan, trim_head=True)
    trimmer = Trimmer.of(p)
    down = Downlink.of(p, trimmer)
    vec = trimmer.canonical(trimmer.init + 0.01, 2)
    q = down.send(KEY, 1, "s/0", vec, 2)
    assert q.n == trimmer.size(2)
    got = down.receive(q, 2)
    assert got.shape == vec.shape
    np.testing.assert_array_equal(got, trimmer.canonical(got, 2))  # unused rows: the initial head
    np.testing.assert_allclose(got, vec, atol=float(q.scales.max()) / levels(8) + 1e-6)


def test_started_state_and_keep_exact(plan) -> None:
    p = with_download(plan)
    down = Downlink.of(p)
    init = down.trimmer.init
    state = ServerState(round=2, k=p.k, vectors={"a/0": init + 0.02, "b/0": init - 0.03}, rounding_key=KEY)
    started, sent = down.started(state, None)
    assert sorted(sent) == ["a/0", "b/0"] and started.rounding_key == KEY and started.round == 2
    for key, q in sent.items():
        np.testing.assert_array_equal(started.vectors[key], down.receive(q, None))
    new = ServerState(round=3, k=p.k, vectors={**started.vectors, "a/0": init + 0.05}, rounding_key=KEY)
    kept = keep_exact(new, started, state)
    np.testing.assert_array_equal(kept.vectors["a/0"], init + 0.05)  # replaced this round: the new mean
    np.testing.assert_array_equal(kept.vectors["b/0"], state.vectors["b/0"])  # sat out: its exact vector
    with pytest.raises(CompressionError, match="no rounding key"):
        down.started(ServerState(round=0, k=p.k, vectors={}), None)


def test_checkpoint_round_trip_and_corrupt_keys(plan) -> None:
    state = ServerState(round=1, k=plan.k, vectors={"a/0": np.zeros(4, np.float32)}, rounding_key=KEY)
    back = ServerState.from_tensors(state.to_tensors())
    assert back.rounding_key == KEY
    assert ServerState.from_tensors(ServerState(round=1, k=2, vectors={}).to_tensors()).rounding_key is None
    bad = state.to_tensors()
    bad["rounding_key"] = bad["rounding_key"][:5]
    with pytest.raises(StateError, match="rounding_key"):
        ServerState.from_tensors(bad)


def _short(p):
    return p.model_copy(update={"rounds": 2, "training": p.training.model_copy(update={"local_steps": 5})})


def test_simulated_rounds_start_quantised_and_keep_exact_means(plan, data) -> None:
    """Round 0 starts from the initial adapter exactly (same result as float32 downloads); the state keeps
    the exact cluster means; from round 1 the sites start from rounded copies; bytes down are the packed ones."""
    from fltac_secure.learning.compress import wire_nbytes
    from fltac_secure.simulation import SimContext
    from fltac_secure.simulation.methods import FLTAC

    base, p = _short(plan), _short(with_download(plan))
    off, on = FLTAC(SimContext(base, data)), FLTAC(SimContext(p, data))
    on.state.rounding_key = KEY
    o0, n0 = off.run_round(0), on.run_round(0)
    assert o0.labels == n0.labels
    for key, vec in off.state.vectors.items():
        np.testing.assert_array_equal(on.state.vectors[key], vec, err_msg=key)
    for key, c in on.state.clusters.labels.items():  # exact means, not their rounded copies
        np.testing.assert_array_equal(on.state.vectors[key], on.state.cluster_vectors[c])
    d, n = on.vector_size, len(on.state.vectors)
    assert n0.down_bytes == n * wire_nbytes(d, 8, 32) + 8 * n and o0.down_bytes == n * 4 * d + 8 * n
    assert n0.down_params == o0.down_params
    off.run_round(1)
    on.run_round(1)
    assert any(not np.array_equal(on.state.vectors[k], v) for k, v in off.state.vectors.items())
    assert on.state.rounding_key == KEY


def test_download_with_trimming_and_secure_aggregation(plan, data) -> None:
    from fltac_secure.learning.compress import wire_nbytes
    from fltac_secure.plan.schema import Plan
    from fltac_secure.simulation import SimContext
    from fltac_secure.simulation.methods import FLTAC

    p = _short(with_download(plan, trim_head=True, bits=8))
    p = Plan.model_validate({**p.model_dump(), "secure_aggregation": {"enabled": True}})
    method = FLTAC(SimContext(p, data))
    for r in range(2):
        out = method.run_round(r)
        assert np.isfinite(out.train_loss)
        trimmer = Trimmer.of(p)
        for key, task in method.ctx.key_task.items():  # canonical, full length
            k = p.task(task).num_labels
            np.testing.assert_array_equal(method.state.vectors[key], trimmer.canonical(method.state.vectors[key], k))
        sizes = [trimmer.size(p.task(t).num_labels) for t in method.ctx.key_task.values()]
        assert out.down_bytes == sum(wire_nbytes(n, 8, 32) for n in sizes) + 8 * len(sizes)


def test_checkpoint_values_want_the_key_exactly_with_download(plan) -> None:
    from aggregator.checkpoint_values import PlanFacts, checkpoint_problems

    on, off = with_download(plan), plan
    for p, key, bad in ((on, KEY, False), (on, None, True), (off, None, False), (off, KEY, True)):
        state = ServerState(round=0, k=p.k, vectors={}, rounding_key=key)
        problems = checkpoint_problems(state, {}, {}, PlanFacts.of(p, 10))
        assert bool([x for x in problems if "rounding key" in x]) == bad, (key, problems)
