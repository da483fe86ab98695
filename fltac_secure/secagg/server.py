"""The aggregator's side of one cluster's secure sum: collect a stage, close it, send the next.

The server holds only what the protocol gives it: public keys, ciphertexts
addressed to members, masked vectors (added into one running sum as they
arrive, never kept one by one), signatures and, at the end, the shares it
needs (self-mask seeds of survivors, key seeds of dropped members). Below
the threshold at any stage the cluster is skipped and the stage's messages
are never sent, so nothing more is revealed.

Driving it: ``receive(sender, record)`` for each message of the current
stage (a bad one raises ``SecAggError`` and excludes its sender), then
``advance()`` when ``pending()`` is empty or the stage timed out; it returns
the records to send, keyed by recipient, and sets ``result`` when done.
"""

from __future__ import annotations

import numpy as np

from fltac_secure.errors import SecAggError
from fltac_secure.secagg import crypto
from fltac_secure.secagg.client import key_seed_private, pair_label, self_mask_key
from fltac_secure.secagg.identity import PeerVerifier
from fltac_secure.secagg.records import (
    ClusterResult, ConsistencySig, KeyAdvert, KeyBook, MaskedInput, SealedShares, Setup, ShareDelivery, Stage,
    SurvivorSet, UnmaskRequest, UnmaskShares,
)  # fmt: skip

_EXPECTED = {Stage.ADVERTISE: KeyAdvert, Stage.SHARE: SealedShares, Stage.MASK: MaskedInput,
             Stage.CONSISTENCY: ConsistencySig, Stage.UNMASK: UnmaskShares}  # fmt: skip
_WHAT = {Stage.ADVERTISE: "advertised keys", Stage.SHARE: "shared their seeds", Stage.MASK: "sent a masked input",
         Stage.CONSISTENCY: "signed the survivor set", Stage.UNMASK: "sent unmasking shares"}  # fmt: skip


class ServerSession:
    """One cluster, one attempt of one round. ``verifier`` (optional) lets an honest server drop forged records early."""

    def __init__(self, setup: Setup, verifier: PeerVerifier | None = None) -> None:
        self.setup = setup
        self._verifier = verifier
        self.stage = Stage.ADVERTISE
        self.result: ClusterResult | None = None
        self._expected: frozenset[str] = frozenset(setup.members)
        self._got: dict[str, object] = {}
        self._refused: set[str] = set()
        self._adverts: dict[str, KeyAdvert] = {}
        self._u2: tuple[str, ...] = ()
        self._u3: tuple[str, ...] = ()
        self._sum = np.zeros(setup.length, dtype=setup.ring.dtype)

    def pending(self) -> frozenset[str]:
        """Members whose record for the current stage has not arrived (empty when done)."""
        if self.result is not None:
            return frozenset()
        return self._expected - set(self._got) - self._refused

    def receive(self, sender: str, record: object) -> None:
        """Accept ``sender``'s record for the current stage; SecAggError (and the sender excluded) if it is bad."""
        if self.result is not None or sender not in self._expected or sender in self._got or sender in self._refused:
            raise SecAggError(f"no record expected from {sender!r} in stage {self.stage.value}", "unexpected")
        want = _EXPECTED[self.stage]
        try:
            if not isinstance(record, want) or record.site != sender:
                raise SecAggError(f"{sender!r} sent {type(record).__name__}, expected its own {want.__name__}", "bad_message")
            self._check(sender, record)
        except SecAggError:
            self._refused.add(sender)
            raise
        if isinstance(record, MaskedInput):
            self._sum += record.vector  # wraps mod 2^bits: the ring
            self._got[sender] = True
        else:
            self._got[sender] = record

    def _check(self, sender: str, record: object) -> None:
        ctx = self.setup.context
        if isinstance(record, KeyAdvert) and self._verifier is not None:
            key = self._verifier.public_key(sender, record.certificate)
            crypto.verify(key, record.signature, record.signed_payload(ctx), f"advertised keys of {sender!r}")
        elif isinstance(record, SealedShares) and set(record.sealed) != set(self._adverts) - {sender}:
            raise SecAggError(f"{sender!r} sealed shares for {sorted(record.sealed)}, not for every other member", "bad_share")
        elif isinstance(record, MaskedInput):
            record.check(self.setup)
        elif isinstance(record, ConsistencySig) and self._verifier is not None:
            key = self._verifier.public_key(sender, self._adverts[sender].certificate)
            crypto.verify(key, record.signature, SurvivorSet(self._u3).signed_payload(ctx), f"survivor-set signature of {sender!r}")
        elif isinstance(record, UnmaskShares):
            dropped = set(self._u2) - set(self._u3)
            if set(record.self_mask) != set(self._u3) or set(record.key_seed) != dropped:
                raise SecAggError(f"{sender!r} sent shares for other members than asked", "bad_share")

    def advance(self) -> dict[str, object]:
        """Close the current stage with whoever answered; the records to send next, by recipient."""
        if self.result is not None:
            raise SecAggError("the protocol has finished; nothing to advance", "unexpected")
        answered = tuple(m for m in self.setup.members if m in self._got)
        if len(answered) < self.setup.threshold:
            self._skip(f"only {len(answered)} of {len(self.setup.members)} members {_WHAT[self.stage]} "
                       f"(threshold {self.setup.threshold})")  # fmt: skip
            return {}
        got, self._got, self._refused = self._got, {}, set()
        self._expected = frozenset(answered)
        stage, out = self.stage, {}
        if stage is Stage.ADVERTISE:
            self._adverts = {m: got[m] for m in answered}  # type: ignore[misc]
            book = KeyBook(tuple(self._adverts.values()))
            out, self.stage = {m: book for m in answered}, Stage.SHARE
        elif stage is Stage.SHARE:
            self._u2 = answered
            out = {m: ShareDelivery(m, {v: got[v].sealed[m] for v in answered if v != m}) for m in answered}  # type: ignore[attr-defined]
            self.stage = Stage.MASK
        elif stage is Stage.MASK:
            self._u3 = answered
            shown = SurvivorSet(answered)
            out, self.stage = {m: shown for m in answered}, Stage.CONSISTENCY
        elif stage is Stage.CONSISTENCY:
            dropped = tuple(m for m in self._u2 if m not in self._u3)
            req = UnmaskRequest(self._u3, dropped, {m: got[m].signature for m in answered})  # type: ignore[attr-defined]
            out, self.stage = {m: req for m in answered}, Stage.UNMASK
        else:
            self._unmask({m: got[m] for m in answered})  # type: ignore[misc]
        return out

    def _skip(self, reason: str) -> None:
        self.stage = Stage.SKIPPED
        self._sum[:] = 0
        dropped = tuple(m for m in self.setup.members if m not in self._u3)
        self.result = ClusterResult(self.setup.context, survivors=(), dropped=dropped, reason=reason)

    def _secrets(self, shares: dict[str, UnmaskShares], owners: tuple[str, ...], kind: str) -> dict[str, bytes]:
        held = {v: {self.setup.index(s): (r.self_mask if kind == "self" else r.key_seed)[v] for s, r in shares.items()}
                for v in owners}  # fmt: skip
        return crypto.combine_many(held, self.setup.threshold)

    def _unmask(self, shares: dict[str, UnmaskShares]) -> None:
        setup = self.setup
        total = self._sum
        for v, seed in self._secrets(shares, self._u3, "self").items():
            total -= crypto.mask(self_mask_key(setup, v, seed), setup.length, setup.ring.dtype)
        lost = tuple(m for m in self._u2 if m not in self._u3)  # shared keys, then dropped: their pairwise masks stay
        for v, seed in self._secrets(shares, lost, "key").items():
            private = key_seed_private(setup, v, seed)
            if crypto.public_bytes(private) != self._adverts[v].s_pk:
                self._skip(f"the shares of {v!r}'s key seed do not rebuild its advertised key (a member sent bad shares)")
                return
            for u in self._u3:
                m = crypto.mask(crypto.agree(private, self._adverts[u].s_pk, pair_label(setup, "pair-mask", u, v)),
                                setup.length, setup.ring.dtype)  # fmt: skip
                if setup.index(u) < setup.index(v):
                    total -= m
                else:
                    total += m
        weights = dict(zip(setup.members, setup.weights, strict=True))
        weight = sum(weights[u] for u in self._u3) / setup.total_weight
        dropped = tuple(m for m in setup.members if m not in self._u3)
        self.result = ClusterResult(setup.context, self._u3, dropped, setup.ring.decode(total), weight)
        self.stage = Stage.DONE
