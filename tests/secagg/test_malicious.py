"""An actively malicious aggregator (a ServerSession subclass that forges what it sends) gets nothing it should not.

Each attack is one that Flower's SecAgg+ or OpenFL's secure aggregation
lets through (see the threat model in fltac_secure/secagg/README.md); here
every member refuses it and no share that would unmask a member is released.
"""

from __future__ import annotations

import dataclasses

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fltac_secure.errors import SecAggError
from fltac_secure.secagg import Context, ServerSession, Stage, run_cluster
from fltac_secure.secagg.crypto import public_bytes
from fltac_secure.secagg.records import KeyBook, ShareDelivery, SurvivorSet, UnmaskRequest

from .conftest import ROWS, SITES, sites


def _reasons(run) -> dict[str, str]:
    return {m: e.reason for m, e in run.errors.items()}


class SwapsAKey(ServerSession):
    """Replaces site1's masking public key with one the server holds (man in the middle)."""

    def advance(self):
        out = super().advance()
        if self.stage is Stage.SHARE:
            mine = public_bytes(X25519PrivateKey.generate())
            book = KeyBook(tuple(dataclasses.replace(a, s_pk=mine) if a.site == SITES[1] else a
                                 for a in next(iter(out.values())).adverts))  # fmt: skip
            out = {m: book for m in out}
        return out


def test_a_substituted_public_key_is_refused_by_every_member(make_cluster) -> None:
    c = make_cluster(sites(4), server_cls=SwapsAKey)
    run = run_cluster(c.server, c.clients)
    assert run.result.skipped
    assert set(run.errors) == set(sites(4))
    assert _reasons(run)[SITES[1]] == "bad_key"  # its own advert came back altered
    assert {r for m, r in _reasons(run).items() if m != SITES[1]} == {"bad_signature"}
    assert "signature does not verify" in str(run.errors[SITES[0]])


class AsksForBoth(ServerSession):
    """Lists site2 both as a survivor and as dropped, to get its self-mask and its key seed."""

    def advance(self):
        out = super().advance()
        if self.stage is Stage.UNMASK:
            out = {m: dataclasses.replace(r, dropped=(*r.dropped, SITES[2])) for m, r in out.items()}
        return out


def test_asking_for_both_shares_of_one_member_is_refused(make_cluster) -> None:
    c = make_cluster(sites(4), server_cls=AsksForBoth)
    run = run_cluster(c.server, c.clients)
    assert set(_reasons(run).values()) == {"one_share"} and len(run.errors) == 4
    assert "one-share rule" in str(run.errors[SITES[0]])
    assert run.result.skipped  # no member answered, so nothing to unmask with


class ShowsTwoSets(ServerSession):
    """Shows half of the survivors the true survivor set and the other half one without site0.

    ``tailored``: each member then gets back its own set with only the signatures made on it
    (the careful cheat); otherwise every member gets the true set with all signatures.
    """

    tailored = False

    def advance(self):
        stage = self.stage
        out = super().advance()
        if self.stage is Stage.CONSISTENCY:
            full = next(iter(out.values())).survivors
            other = SurvivorSet(tuple(s for s in full if s != SITES[0]))
            self.shown = {m: (r if i % 2 == 0 else other) for i, (m, r) in enumerate(out.items())}
            out = dict(self.shown)
        elif stage is Stage.CONSISTENCY and self.tailored:
            out = {m: UnmaskRequest(self.shown[m].survivors, r.dropped,
                                    {k: v for k, v in r.signatures.items() if self.shown[k] == self.shown[m]})
                   for m, r in out.items()}  # fmt: skip
        return out

    def _check(self, sender, record):  # accepts every signature, as a cheating server would
        if not hasattr(record, "signature"):
            super()._check(sender, record)


class TailorsTwoSets(ShowsTwoSets):
    tailored = True


@pytest.mark.parametrize("server_cls", [ShowsTwoSets, TailorsTwoSets])
def test_different_survivor_sets_for_different_members_reveal_no_share(make_cluster, server_cls) -> None:
    c = make_cluster(sites(6), server_cls=server_cls)  # t = 5: neither half reaches t signatures on one set
    run = run_cluster(c.server, c.clients)
    assert run.result.skipped
    assert run.released_shares() == []
    assert len(run.errors) == 6
    expected = {"below_threshold"} if server_cls.tailored else {"bad_signature", "bad_survivors"}
    assert {e.reason for e in run.errors.values()} == expected


def test_replayed_key_book_and_shares_from_the_last_round_are_refused(make_cluster) -> None:
    old = make_cluster(sites(3), context=Context("planhash", 3, 0, 1), seed=5)
    book, deliveries = _first_two_stages(old)
    new = make_cluster(sites(3), context=Context("planhash", 4, 0, 1), seed=5)
    client = new.clients[SITES[0]]
    client.advertise()
    with pytest.raises(SecAggError) as exc:
        client.handle(book)  # last round's adverts: this member's own advert is not in it
    assert exc.value.reason == "bad_key"
    # an honest key book this round, then last round's ciphertexts
    new2 = make_cluster(sites(3), context=Context("planhash", 4, 0, 1), seed=5)
    book2, _ = _first_stage(new2)
    victim = new2.clients[SITES[0]]
    victim.handle(book2[SITES[0]])
    with pytest.raises(SecAggError, match="does not decrypt") as exc:
        victim.handle(ShareDelivery(SITES[0], deliveries[SITES[0]].sealed))
    assert exc.value.reason == "bad_share"


def test_a_replayed_advert_signed_for_another_round_fails_its_signature(make_cluster, verifier) -> None:
    old = make_cluster(sites(3), context=Context("planhash", 3, 0, 1))
    stale = old.clients[SITES[1]].advertise()
    new = make_cluster(sites(3), context=Context("planhash", 3, 1, 1))  # the same round, retried
    server = new.server
    with pytest.raises(SecAggError, match="signature does not verify"):
        server.receive(SITES[1], stale)
    client = new.clients[SITES[0]]
    adverts = (client.advertise(), new.clients[SITES[2]].advertise(), stale)
    with pytest.raises(SecAggError, match="signature does not verify"):
        client.handle(KeyBook(adverts))


def test_a_share_sealed_for_another_member_fails_authentication(make_cluster) -> None:
    c = make_cluster(sites(3))
    _, deliveries = _first_two_stages(c)
    victim = c.clients[SITES[0]]
    wrong = ShareDelivery(SITES[0], {SITES[2]: deliveries[SITES[1]].sealed[SITES[2]]})  # site2's share for site1
    with pytest.raises(SecAggError, match="does not decrypt") as exc:
        victim.handle(wrong)
    assert exc.value.reason == "bad_share"


def test_an_unmask_request_needs_t_valid_signatures_on_the_signed_set(make_cluster) -> None:
    c = make_cluster(sites(3))
    for m, cl in c.clients.items():
        c.server.receive(m, cl.advertise())
    inbox = c.server.advance()
    for _ in range(3):  # share, mask, consistency
        for m, cl in c.clients.items():
            c.server.receive(m, cl.handle(inbox[m]))
        inbox = c.server.advance()
    req: UnmaskRequest = inbox[SITES[0]]
    forged = dict(req.signatures)
    forged[SITES[1]] = forged[SITES[2]]  # site2's signature presented as site1's
    with pytest.raises(SecAggError, match="signature") as exc:
        c.clients[SITES[0]].handle(dataclasses.replace(req, signatures=forged))
    assert exc.value.reason == "bad_signature"
    few = {SITES[0]: req.signatures[SITES[0]]}
    with pytest.raises(SecAggError, match="out_of_order|stage"):  # one answer per run, even after a refusal
        c.clients[SITES[0]].handle(dataclasses.replace(req, signatures=few))
    with pytest.raises(SecAggError, match="only 1 valid signatures"):
        c.clients[SITES[1]].handle(dataclasses.replace(req, signatures={SITES[1]: req.signatures[SITES[1]]}))


def _first_stage(c):
    for m, cl in c.clients.items():
        c.server.receive(m, cl.advertise())
    return c.server.advance(), None


def _first_two_stages(c):
    books, _ = _first_stage(c)
    for m, cl in c.clients.items():
        c.server.receive(m, cl.handle(books[m]))
    deliveries = c.server.advance()
    return next(iter(books.values())), deliveries


def test_members_shown_different_lengths_refuse_each_others_shares(make_cluster, signers, verifier) -> None:
    """The length is bound into every pairwise key: an aggregator announcing a longer vector to one member
    (compression.trim_head: its entries would misalign with the others' zeros) gets no masked input from the
    members it split, and the cluster is not summed."""
    import numpy as np

    from fltac_secure.secagg import ClientSession

    c = make_cluster(sites(3))
    longer = dataclasses.replace(c.setup, length=c.setup.length + 3)
    odd = SITES[0]
    c.clients[odd] = ClientSession(longer, signers[odd], verifier, [np.zeros(longer.length)], [c.weights[odd]],
                                   **ROWS)
    run = run_cluster(c.server, c.clients)
    assert run.result.skipped
    assert set(_reasons(run).values()) == {"bad_share"} and set(run.errors) == set(sites(3))
    assert not any("MaskedInput" in sent for sent in run.sent.values())
