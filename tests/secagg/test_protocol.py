"""The honest protocol in one process: exact sums, cancelling masks, uniform uploads, dropouts at every stage."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

from fltac_secure.errors import SecAggError
from fltac_secure.secagg import ClientSession, Context, Ring, ServerSession, Setup, Stage, run_cluster, threshold_for
from fltac_secure.secagg.records import KeyBook, MaskedInput, ShareDelivery
from fltac_secure.secagg.rules import cluster_setup, member_weights

from .conftest import ROWS, SITES, sites

LATE = [Stage.SHARE, Stage.MASK, Stage.CONSISTENCY, Stage.UNMASK]


def test_honest_cluster_sums_to_the_weighted_mean(make_cluster) -> None:
    c = make_cluster(sites(5), length=300)
    run = run_cluster(c.server, c.clients)
    res = run.result
    assert not res.skipped and res.survivors == sites(5) and res.dropped == () and not run.errors
    assert np.max(np.abs(res.total - c.expected(sites(5)))) <= c.ring.error_bound(5)
    plain = sum(c.weights[m] * c.vectors[m] for m in sites(5)) / sum(c.weights.values())
    assert np.allclose(res.mean, plain, atol=c.ring.error_bound(5))
    assert res.weight == pytest.approx(1.0)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    members=st.lists(st.sampled_from(SITES), min_size=2, max_size=8, unique=True),
    drops=st.lists(st.sampled_from(LATE), max_size=8),
    fraction=st.sampled_from([0.5, 2 / 3, 0.75]),
)
def test_masks_cancel_exactly_for_any_member_set_and_dropouts(make_cluster, members, drops, fraction) -> None:
    # zero inputs: the unmasked sum must be exactly zero, so every mask (pairwise and self) was removed exactly
    zeros = {m: np.zeros(40) for m in members}
    c = make_cluster(members, length=40, fraction=fraction, vectors=zeros)
    drop = dict(zip(members, drops, strict=False))
    run = run_cluster(c.server, c.clients, drop)
    res = run.result
    if res.skipped:
        assert "threshold" in (res.reason or "")
        # fewer than t members revealed shares: no secret can be rebuilt from them
        assert len(run.released_shares()) < c.setup.threshold
    else:
        assert not np.any(res.total), "masks did not cancel"
        assert set(res.survivors) == {m for m in members if drop.get(m) not in (Stage.SHARE, Stage.MASK)}


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(members=st.lists(st.sampled_from(SITES), min_size=2, max_size=8, unique=True), seed=st.integers(0, 2**16))
def test_unmasked_sum_equals_the_plain_weighted_sum(make_cluster, members, seed) -> None:
    c = make_cluster(members, length=50, seed=seed, ring=Ring(32, 22, 4.0))
    res = run_cluster(c.server, c.clients).result
    assert np.max(np.abs(res.total - c.expected(members))) <= c.ring.error_bound(len(members))


def _masked_input(c, site: str) -> np.ndarray:
    """Drive the protocol up to ``site``'s masked input and return it."""
    inbox = {}
    for m, cl in c.clients.items():
        c.server.receive(m, cl.advertise())
    inbox = c.server.advance()
    for m, cl in c.clients.items():
        c.server.receive(m, cl.handle(inbox[m]))
    inbox = c.server.advance()
    reply = c.clients[site].handle(inbox[site])
    assert isinstance(reply, MaskedInput)
    return reply.vector


def test_masked_inputs_look_uniform_and_uncorrelated_with_the_input(make_cluster) -> None:
    length = 4096
    signal = np.sin(np.arange(length) / 30.0) * 4  # a structured input near the clip range
    draws = []
    for seed in range(12):
        c = make_cluster(sites(2), length=length, seed=seed, vectors={m: signal for m in sites(2)})
        draws.append(_masked_input(c, SITES[0]).astype(np.float64) / 2.0**32)
    pooled = np.concatenate(draws)
    assert stats.kstest(pooled, "uniform").pvalue > 1e-4
    for d in draws:  # per draw, no linear trace of the input (|r| < 5 sigma of a random vector)
        assert abs(np.corrcoef(d, signal)[0, 1]) < 5 / np.sqrt(length)
    # and the encoding alone is visibly correlated, so the check can see a leak
    enc = Ring(32, 20, 8.0).encode(signal * 0.5).view(np.int32).astype(np.float64)
    assert np.corrcoef(enc, signal)[0, 1] > 0.99


def test_dropouts_before_and_after_the_masked_input(make_cluster) -> None:
    members = sites(8)  # t = 6 of 8
    c = make_cluster(members, length=200)
    run = run_cluster(c.server, c.clients, {SITES[2]: Stage.MASK, SITES[5]: Stage.CONSISTENCY})
    res = run.result
    survivors = tuple(m for m in members if m != SITES[2])
    assert res.survivors == survivors and res.dropped == (SITES[2],)
    assert np.max(np.abs(res.total - c.expected(survivors))) <= c.ring.error_bound(8)
    weights = sum(c.weights[m] for m in survivors) / sum(c.weights.values())
    assert res.weight == pytest.approx(weights)


def test_a_dropout_during_key_sharing_is_survived(make_cluster) -> None:
    members = sites(7)  # t = 5
    c = make_cluster(members, length=100)
    run = run_cluster(c.server, c.clients, {SITES[1]: Stage.SHARE, SITES[6]: Stage.UNMASK})
    survivors = tuple(m for m in members if m != SITES[1])
    assert run.result.survivors == survivors
    assert np.max(np.abs(run.result.total - c.expected(survivors))) <= c.ring.error_bound(7)


def test_below_threshold_survivors_skip_the_cluster_and_reveal_nothing(make_cluster) -> None:
    members = sites(6)  # t = 5: two dropped before the masked input leave 4
    c = make_cluster(members, length=30)
    run = run_cluster(c.server, c.clients, {SITES[0]: Stage.MASK, SITES[3]: Stage.MASK})
    res = run.result
    assert res.skipped and "only 4 of 6 members sent a masked input (threshold 5)" in (res.reason or "")
    assert run.released_shares() == []
    with pytest.raises(SecAggError, match="not summed"):
        res.mean


def test_every_run_draws_fresh_keys_and_seeds(make_cluster) -> None:
    a, b = make_cluster(sites(3), seed=1), make_cluster(sites(3), seed=1)
    adv_a, adv_b = a.clients[SITES[0]].advertise(), b.clients[SITES[0]].advertise()
    assert adv_a.c_pk != adv_b.c_pk and adv_a.s_pk != adv_b.s_pk
    assert not np.array_equal(_masked_input(make_cluster(sites(2), seed=2), SITES[0]),
                              _masked_input(make_cluster(sites(2), seed=2), SITES[0]))  # fmt: skip


def test_a_site_with_two_slots_in_one_cluster_takes_part_once(make_cluster, signers, verifier) -> None:
    weights = member_weights([SITES[0], SITES[1], SITES[0]], [10.0, 30.0, 20.0])
    assert weights == {SITES[0]: 30.0, SITES[1]: 30.0}
    setup = cluster_setup(_section(), Context("h", 0, 0, 0), weights, 5)
    assert isinstance(setup, Setup) and setup.members == (SITES[0], SITES[1]) and setup.threshold == 2
    x = {k: np.full(5, v) for k, v in (("a", 1.0), ("b", 2.0), ("c", -1.0))}
    clients = {
        SITES[0]: ClientSession(setup, signers[SITES[0]], verifier, [x["a"], x["c"]], [10.0, 20.0], **ROWS),
        SITES[1]: ClientSession(setup, signers[SITES[1]], verifier, [x["b"]], [30.0], **ROWS),
    }
    res = run_cluster(ServerSession(setup, verifier), clients).result
    assert np.allclose(res.mean, (10 * 1.0 + 30 * 2.0 + 20 * -1.0) / 60, atol=setup.ring.error_bound(2))


def _section():
    from fltac_secure.plan.schema import SecureAggregation

    return SecureAggregation(enabled=True, fractional_bits=20)


def test_a_one_member_cluster_is_not_summed() -> None:
    reason = cluster_setup(_section(), Context("h", 0, 0, 0), {SITES[0]: 5.0}, 5)
    assert isinstance(reason, str) and "min_cluster_size 2" in reason


@pytest.mark.parametrize(("n", "fraction", "t"), [(2, 2 / 3, 2), (3, 2 / 3, 3), (7, 2 / 3, 5), (10, 0.5, 6), (100, 2 / 3, 67)])
def test_threshold_is_strictly_more_than_the_fraction(n: int, fraction: float, t: int) -> None:
    assert threshold_for(n, fraction) == t


def test_setups_that_weaken_the_protocol_are_refused() -> None:
    ring, ctx = Ring(32, 20, 8.0), Context("h", 0, 0, 0)
    with pytest.raises(SecAggError, match="above half"):
        Setup(ctx, sites(4), (1.0,) * 4, 2, ring, 10)
    with pytest.raises(SecAggError, match="at least 2"):
        Setup(ctx, sites(1), (1.0,), 1, ring, 10)
    with pytest.raises(SecAggError, match="overflow the ring"):
        Setup(ctx, sites(8), (1.0,) * 8, 6, Ring(32, 28, 4.0), 10)
    with pytest.raises(SecAggError, match="threshold fraction"):
        threshold_for(10, 0.4)


def test_a_misweighted_member_refuses_the_setup(signers, verifier) -> None:
    setup = Setup(Context("h", 0, 0, 0), sites(2), (5.0, 5.0), 2, Ring(32, 20, 8.0), 4)
    with pytest.raises(SecAggError, match="misweights"):
        ClientSession(setup, signers[SITES[0]], verifier, [np.zeros(4)], [50.0], **ROWS)


def test_records_arriving_out_of_order_are_refused(make_cluster) -> None:
    c = make_cluster(sites(3))
    client = c.clients[SITES[0]]
    with pytest.raises(SecAggError, match="stage"):
        client.handle(ShareDelivery(SITES[0], {}))
    advert = client.advertise()
    with pytest.raises(SecAggError, match="stage"):
        client.advertise()
    book = KeyBook((advert,))
    with pytest.raises(SecAggError, match="only 1 members advertised keys, threshold is 3"):
        client.handle(book)


def test_bad_key_seed_shares_from_a_member_skip_the_cluster_instead_of_a_wrong_sum(make_cluster) -> None:
    c = make_cluster(sites(4), length=20, fraction=0.5)  # t = 3
    honest = c.clients[SITES[0]].handle

    def tampering(record):
        reply = honest(record)
        if getattr(reply, "key_seed", None):
            reply = dataclasses.replace(reply, key_seed={k: bytes(16) for k in reply.key_seed})
        return reply

    c.clients[SITES[0]].handle = tampering
    res = run_cluster(c.server, c.clients, {SITES[3]: Stage.MASK}).result
    assert res.skipped and "do not rebuild its advertised key" in (res.reason or "")
