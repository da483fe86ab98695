"""Head rows: every head row a member uses is summed over at least min_cluster_size members, or it refuses.

A slot of a k-label task uses head rows 0..k-1; the others hold values the
aggregator knows (zeros or the start it sent). In a cluster mixing widths, a
row used by one member only would come out of the sum exactly. Here the
vectors' first ``width`` entries stand for a member's head rows; the members
sign their widths into their adverts and refuse (``lonely_rows``) whatever
the aggregator (here: one that built such a cluster) asks.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fltac_secure.errors import SecAggError
from fltac_secure.federation import secure_messages as sm
from fltac_secure.secagg import ServerSession, Stage, run_cluster
from fltac_secure.secagg.records import KeyBook
from fltac_secure.secagg.rules import lonely_rows
from fltac_secure.transport.envelope import Message

from .conftest import SITES, sites

NARROW, WIDE, LENGTH = 2, 6, 8


def _vectors(widths: dict[str, int], seed: int = 0) -> dict[str, np.ndarray]:
    """Each member's vector: values on its first ``width`` entries, zero beyond (rows it does not use)."""
    rng = np.random.default_rng(seed)
    return {m: np.where(np.arange(LENGTH) < w, rng.uniform(0.5, 1.5, LENGTH), 0.0) for m, w in widths.items()}


def _cluster(make_cluster, widths: dict[str, int], **kw):
    return make_cluster(tuple(widths), length=LENGTH, vectors=_vectors(widths), widths=widths, **kw)


def test_the_rule() -> None:
    assert lonely_rows({"a": 2, "b": 2, "c": 4}, 2) == {"c": 1}
    assert lonely_rows({"a": 4, "b": 4, "c": 2}, 2) == {}
    assert lonely_rows({"a": 4, "b": 4, "c": 2, "d": 2}, 3) == {"a": 2, "b": 2}
    assert lonely_rows({"a": 3, "b": 3}, 2) == {}


def test_a_wide_member_among_narrow_ones_refuses_and_its_rows_stay_hidden(make_cluster) -> None:
    """The aggregator puts one wide slot among narrow ones: the wide member sends neither shares nor a masked
    input; the others are summed and the sum's rows beyond the narrow width hold nothing of it."""
    widths = {SITES[0]: WIDE, **{m: NARROW for m in sites(4)[1:]}}
    c = _cluster(make_cluster, widths)
    run = run_cluster(c.server, c.clients)
    assert {m: e.reason for m, e in run.errors.items()} == {SITES[0]: "lonely_rows"}
    assert "min_cluster_size 2" in str(run.errors[SITES[0]])
    assert run.sent[SITES[0]] == ["KeyAdvert"]  # nothing after the key book
    assert not run.result.skipped and SITES[0] in run.result.dropped
    narrow = sites(4)[1:]
    assert run.result.survivors == narrow
    np.testing.assert_array_equal(run.result.total[NARROW:], 0.0)  # no contribution of the wide member
    np.testing.assert_allclose(run.result.total, c.expected(narrow), atol=c.ring.error_bound(3))


class RaisesAWidth(ServerSession):
    """Shows everyone a narrow member's advert with the wide width, so the wide member believes it has a peer."""

    def advance(self):
        out = super().advance()
        if self.stage is Stage.SHARE:
            book = KeyBook(tuple(dataclasses.replace(a, width=WIDE) if a.site == SITES[1] else a
                                 for a in next(iter(out.values())).adverts))  # fmt: skip
            out = {m: book for m in out}
        return out


def test_an_altered_width_fails_the_signature(make_cluster) -> None:
    widths = {SITES[0]: WIDE, **{m: NARROW for m in sites(4)[1:]}}
    c = _cluster(make_cluster, widths, server_cls=RaisesAWidth)
    run = run_cluster(c.server, c.clients)
    reasons = {m: e.reason for m, e in run.errors.items()}
    assert reasons[SITES[1]] == "bad_key"  # its own advert came back altered
    assert reasons[SITES[0]] == "bad_signature" and "signature does not verify" in str(run.errors[SITES[0]])
    assert all("MaskedInput" not in kinds for kinds in run.sent.values())
    assert run.result.skipped


def test_an_unmask_request_is_refused_when_the_only_wide_peer_sent_no_masked_input(make_cluster) -> None:
    """Two wide members pass the key book; one then sends no masked input. Every survivor refuses to unmask
    (not only the wide one: with 6 survivors and t = 5, the five narrow ones alone would rebuild its self mask),
    so the cluster is not unmasked."""
    widths = {SITES[0]: WIDE, SITES[1]: WIDE, **{m: NARROW for m in sites(7)[2:]}}
    c = _cluster(make_cluster, widths)
    assert c.setup.threshold == 5
    run = run_cluster(c.server, c.clients, drop={SITES[1]: Stage.MASK})
    assert "MaskedInput" in run.sent[SITES[0]]  # the key book had two wide members
    assert run.released_shares() == []
    assert {m: e.reason for m, e in run.errors.items()} == {m: "lonely_rows" for m in sites(7) if m != SITES[1]}
    assert "the survivor set" in str(run.errors[SITES[2]])
    assert run.result.skipped


@pytest.mark.parametrize("drop", [None, SITES[4]])
def test_honest_clusters_are_unaffected(make_cluster, drop) -> None:
    """Same widths, or the widest width held by at least min_cluster_size members: summed as before, also
    when a narrow member drops out."""
    for widths in ({m: WIDE for m in sites(5)}, {SITES[0]: WIDE, SITES[1]: WIDE, **{m: NARROW for m in sites(5)[2:]}}):
        c = _cluster(make_cluster, widths)
        run = run_cluster(c.server, c.clients, drop={drop: Stage.MASK} if drop else None)
        assert run.errors == {} and not run.result.skipped
        survivors = tuple(m for m in sites(5) if m != drop)
        assert run.result.survivors == survivors
        np.testing.assert_allclose(run.result.total, c.expected(survivors), atol=c.ring.error_bound(5))


def test_the_plan_min_cluster_size_counts(make_cluster) -> None:
    """min_cluster_size 3: two wide members among narrow ones are too few; both leave, the narrow ones are summed."""
    widths = {SITES[0]: WIDE, SITES[1]: WIDE, **{m: NARROW for m in sites(7)[2:]}}
    c = _cluster(make_cluster, widths, min_cluster_size=3)
    run = run_cluster(c.server, c.clients)
    assert {m: e.reason for m, e in run.errors.items()} == {SITES[0]: "lonely_rows", SITES[1]: "lonely_rows"}
    assert run.result.survivors == sites(7)[2:]
    np.testing.assert_array_equal(run.result.total[NARROW:], 0.0)


def test_a_session_needs_min_cluster_size_of_two(make_cluster, signers, verifier) -> None:
    from fltac_secure.secagg import ClientSession

    c = make_cluster(sites(2), length=LENGTH)
    with pytest.raises(SecAggError, match="min_cluster_size"):
        ClientSession(c.setup, signers[SITES[0]], verifier, [np.zeros(LENGTH)], [c.weights[SITES[0]]], width=1,
                      min_cluster_size=1)  # fmt: skip


def _message(kind: str, parts: dict, sender: str = SITES[0]) -> Message:
    return Message(kind=kind, federation="f", plan_hash="h", sender=sender, round=3, meta=parts["meta"],
                   tensors=parts["tensors"])


def test_the_width_travels_signed_on_the_wire(make_cluster) -> None:
    """SA_KEYS and SA_KEYBOOK carry each width; a member's answer may leave out a cluster it left."""
    widths = {SITES[0]: WIDE, SITES[1]: NARROW}
    c = _cluster(make_cluster, widths)
    adverts = {m: cl.advertise() for m, cl in c.clients.items()}
    got = sm.parse_keys(_message(sm.SA_KEYS, sm.keys_parts(7, {1: adverts[SITES[0]]})), [1])
    assert got[1] == adverts[SITES[0]] and got[1].width == WIDE
    book = sm.parse_keybook(_message(sm.SA_KEYBOOK, sm.keybook_parts(7, {1: KeyBook(tuple(adverts.values()))})))
    assert {a.site: a.width for a in book[1].adverts} == widths
    with pytest.raises(Exception, match="expected"):  # SA_KEYS must carry every cluster of the assignment
        sm.parse_keys(_message(sm.SA_KEYS, sm.keys_parts(7, {1: adverts[SITES[0]]})), [1, 2])
    assert sm.parse_consistency(_message(sm.SA_CONSISTENCY, sm.consistency_parts(7, {})), [1, 2]) == {}
