"""A member's side of one cluster's secure sum: a state machine, one record in, one record out.

The member checks everything an actively malicious aggregator could forge
before it acts on it: every advertised key must carry a valid signature by
its owner's enrolled certificate (``PeerVerifier``); its own advert must come
back unchanged; shares must decrypt under the pairwise key with the full
context as associated data; it signs only a survivor set that contains it
and that it could have seen; and it reveals shares only after verifying at
least t signatures on exactly the set it signed. Head rows: each member
signs its width (the head rows its slots use) into its advert; it sends
nothing for the cluster past the key book if its own widest row would be
summed over fewer than ``min_cluster_size`` members, and it reveals no
shares if any survivor's would (``lonely_rows``): otherwise the sum would
reveal that row, whoever built the cluster. One-share rule: no member
is ever both a survivor (self-mask share revealed) and dropped (key-seed
share revealed), and a member answers one unmask request per run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fltac_secure.errors import SecAggError
from fltac_secure.secagg import crypto
from fltac_secure.secagg.identity import PeerVerifier, Signer
from fltac_secure.secagg.rules import lonely_rows
from fltac_secure.secagg.records import (
    ConsistencySig, KeyAdvert, KeyBook, MaskedInput, SealedShares, Setup, ShareDelivery, Stage, SurvivorSet,
    UnmaskRequest, UnmaskShares,
)  # fmt: skip

Reply = KeyAdvert | SealedShares | MaskedInput | ConsistencySig | UnmaskShares


def pair_label(setup: Setup, purpose: str, a: str, b: str) -> bytes:
    """The ``info`` of a pairwise key: the pair in member order, so both ends derive the same key, and the
    setup's vector length.  Binding the length answers an aggregator that announces different lengths to
    different members (with compression.trim_head the entries would misalign, and a member's own values could
    meet another's zeros in the sum): such members derive different keys, so their shares fail to decrypt
    (``bad_share``) before any masked input is sent, and their masks would never cancel."""
    lo, hi = sorted((a, b), key=setup.index)
    return setup.context.label(purpose, lo, hi, setup.length)


def self_mask_key(setup: Setup, site: str, seed: bytes) -> bytes:
    return crypto.hkdf(seed, setup.context.label("self-mask", site))


def key_seed_private(setup: Setup, site: str, seed: bytes) -> X25519PrivateKey:
    return crypto.x25519_from_seed(seed, setup.context.label("s-key", site))


def share_associated(setup: Setup, sender: str, recipient: str) -> bytes:
    return setup.context.label("share", sender, recipient)


class ClientSession:
    """One member, one cluster, one attempt of one round. Fresh keys and seeds are drawn in the constructor."""

    def __init__(
        self, setup: Setup, signer: Signer, verifier: PeerVerifier, vectors: Sequence[np.ndarray],
        weights: Sequence[float], *, width: int, min_cluster_size: int, rng: np.random.Generator | None = None,
    ) -> None:  # fmt: skip
        """``vectors``: the member's slot vectors (slot updates with a ``QuantRing``); ``width``: the largest
        label count among its slots here (signed into its advert); ``min_cluster_size``: the plan's, from this
        member's own copy of the plan (never the aggregator's word); ``rng`` (tests only): the quantised ring's
        rounding draws instead of OS randomness."""
        if min_cluster_size < 2:
            raise SecAggError(f"min_cluster_size {min_cluster_size} must be at least 2", "bad_setup")
        if signer.name not in setup.members:
            raise SecAggError(f"{signer.name!r} is not a member of cluster {setup.context.cluster}", "not_member")
        me = signer.name
        own = float(sum(weights))
        if not math.isclose(own, setup.weights[setup.index(me) - 1], rel_tol=1e-9):
            raise SecAggError(
                f"the aggregator announced weight {setup.weights[setup.index(me) - 1]} for {me!r}, its slots weigh "
                f"{own}; refusing a setup that misweights this member", "bad_setup",
            )  # fmt: skip
        weighted, self.clipped = setup.ring.weighted(list(vectors), list(weights), setup.total_weight)
        if weighted.shape != (setup.length,):
            raise SecAggError(f"vector length {weighted.size} differs from the setup's {setup.length}", "bad_setup")
        self.setup, self.me, self._signer, self._verifier = setup, me, signer, verifier
        self.width, self.min_cluster_size = width, min_cluster_size
        self._encoded: np.ndarray | None = setup.ring.encode(weighted, rng)
        self._c = X25519PrivateKey.generate()
        self._s_seed, self._b_seed = crypto.fresh_seed(), crypto.fresh_seed()
        self._s = key_seed_private(setup, me, self._s_seed)
        self._peers: dict[str, KeyAdvert] = {}
        self._signing: dict[str, ec.EllipticCurvePublicKey] = {}
        self._held: dict[str, tuple[bytes, bytes]] = {}  # owner -> (key-seed share, self-mask share) at my index
        self._signed_set: frozenset[str] | None = None
        self.stage = Stage.ADVERTISE
        self._advert = self._make_advert()

    def _make_advert(self) -> KeyAdvert:
        unsigned = KeyAdvert(self.me, crypto.public_bytes(self._c), crypto.public_bytes(self._s), self.width,
                             self._signer.certificate, b"")  # fmt: skip
        sig = crypto.sign(self._signer.key, unsigned.signed_payload(self.setup.context))
        return KeyAdvert(unsigned.site, unsigned.c_pk, unsigned.s_pk, unsigned.width, unsigned.certificate, sig)

    def advertise(self) -> KeyAdvert:
        """Stage 0: this member's signed public keys."""
        self._expect(Stage.ADVERTISE, "advertise")
        self.stage = Stage.SHARE
        return self._advert

    def handle(self, message: object) -> Reply:
        """Take the aggregator's record for the current stage and return this member's answer."""
        steps = {KeyBook: (Stage.SHARE, self._on_keys), ShareDelivery: (Stage.MASK, self._on_shares),
                 SurvivorSet: (Stage.CONSISTENCY, self._on_survivors), UnmaskRequest: (Stage.UNMASK, self._on_unmask)}
        if type(message) not in steps:
            raise SecAggError(f"unexpected record {type(message).__name__}", "bad_message")
        stage, step = steps[type(message)]
        self._expect(stage, type(message).__name__)
        return step(message)

    def _expect(self, stage: Stage, what: str) -> None:
        if self.stage is not stage:
            raise SecAggError(
                f"{what} arrived in stage {self.stage.value}, expected in {stage.value}; a member answers each "
                "stage once, in order (replays and repeated requests are refused)", "out_of_order",
            )  # fmt: skip

    def _need(self, count: int, what: str) -> None:
        if count < self.setup.threshold:
            self.stage = Stage.SKIPPED
            raise SecAggError(f"only {count} {what}, threshold is {self.setup.threshold}", "below_threshold")

    def _check_rows(self, widths: dict[str, int], whose: Sequence[str], among: str) -> None:
        """Refuse (``lonely_rows``, this stage answered no more) if a head row of one of ``whose`` would be
        summed over fewer than ``min_cluster_size`` of the members in ``widths`` (signed adverts)."""
        lonely = {s: n for s, n in lonely_rows(widths, self.min_cluster_size).items() if s in whose}
        if lonely:
            self.stage = Stage.SKIPPED
            detail = ", ".join(f"{s!r} (width {widths[s]}: {n} member(s) that wide)" for s, n in sorted(lonely.items()))
            raise SecAggError(
                f"cluster {self.setup.context.cluster}: in {among}, head rows of {detail} would be summed over fewer "
                f"than min_cluster_size {self.min_cluster_size} members, so the sum would reveal them; "
                "this member takes no further part in the cluster", "lonely_rows",
            )  # fmt: skip

    def _on_keys(self, book: KeyBook) -> SealedShares:
        setup, ctx = self.setup, self.setup.context
        sites = [a.site for a in book.adverts]
        strangers = sorted(set(sites) - set(setup.members))
        if strangers:
            raise SecAggError(f"key book lists non-members {strangers}", "bad_message")
        mine = [a for a in book.adverts if a.site == self.me]
        if mine != [self._advert]:
            raise SecAggError("key book does not carry this member's own advert unchanged; keys substituted", "bad_key")
        self._need(len(sites), "members advertised keys")
        for adv in book.adverts:
            key = self._verifier.public_key(adv.site, adv.certificate)
            crypto.verify(key, adv.signature, adv.signed_payload(ctx), f"advertised keys of {adv.site!r}")
            self._signing[adv.site] = key
        if len({a.c_pk for a in book.adverts} | {a.s_pk for a in book.adverts}) != 2 * len(sites):
            raise SecAggError("advertised public keys repeat; every key must be fresh", "bad_key")
        self._peers = {a.site: a for a in book.adverts}
        self._check_rows({a.site: a.width for a in book.adverts}, [self.me], "the key book")
        n, t = len(setup.members), setup.threshold
        s_shares, b_shares = crypto.split(self._s_seed, t, n), crypto.split(self._b_seed, t, n)
        sealed = {}
        for site in sites:
            i = setup.index(site) - 1
            if site == self.me:
                self._held[site] = (s_shares[i], b_shares[i])
                continue
            key = crypto.agree(self._c, self._peers[site].c_pk, pair_label(setup, "share-key", self.me, site))
            sealed[site] = crypto.seal(key, s_shares[i] + b_shares[i], share_associated(setup, self.me, site))
        self.stage = Stage.MASK
        return SealedShares(self.me, sealed)

    def _on_shares(self, delivery: ShareDelivery) -> MaskedInput:
        setup = self.setup
        if delivery.recipient != self.me:
            raise SecAggError(f"shares addressed to {delivery.recipient!r} delivered to {self.me!r}", "bad_share")
        unknown = sorted(set(delivery.sealed) - (set(self._peers) - {self.me}))
        if unknown:
            raise SecAggError(f"shares from members that advertised no keys: {unknown}", "bad_share")
        for sender, blob in delivery.sealed.items():
            key = crypto.agree(self._c, self._peers[sender].c_pk, pair_label(setup, "share-key", sender, self.me))
            plain = crypto.open_sealed(key, blob, share_associated(setup, sender, self.me), f"share from {sender!r}")
            if len(plain) != crypto.SHARE_PLAINTEXT:
                raise SecAggError(f"share from {sender!r} has the wrong length", "bad_share")
            self._held[sender] = (plain[: crypto.SEED_BYTES], plain[crypto.SEED_BYTES :])
        self._need(len(self._held), "members shared their seeds")
        assert self._encoded is not None
        y = self._encoded.copy()
        self._encoded = None  # the plain encoding is not kept once masked
        y += crypto.mask(self_mask_key(setup, self.me, self._b_seed), setup.length, setup.ring.dtype)
        mine = setup.index(self.me)
        for peer in self._held:
            if peer == self.me:
                continue
            m = crypto.mask(crypto.agree(self._s, self._peers[peer].s_pk, pair_label(setup, "pair-mask", self.me, peer)),
                            setup.length, setup.ring.dtype)  # fmt: skip
            if mine < setup.index(peer):
                y += m
            else:
                y -= m
        self.stage = Stage.CONSISTENCY
        return MaskedInput(self.me, setup.ring.reduce(y))

    def _on_survivors(self, shown: SurvivorSet) -> ConsistencySig:
        survivors = frozenset(shown.survivors)
        if self.me not in survivors:
            raise SecAggError("survivor set omits this member, which sent its masked input", "bad_survivors")
        outside = sorted(survivors - set(self._held))
        if outside:
            raise SecAggError(f"survivor set names members whose shares this member never got: {outside}", "bad_survivors")
        self._need(len(survivors), "survivors")
        self._signed_set = survivors
        self.stage = Stage.UNMASK
        return ConsistencySig(self.me, crypto.sign(self._signer.key, shown.signed_payload(self.setup.context)))

    def _on_unmask(self, req: UnmaskRequest) -> UnmaskShares:
        survivors, dropped = frozenset(req.survivors), frozenset(req.dropped)
        self.stage = Stage.DONE  # one answer per run, whatever happens below
        both = sorted(survivors & dropped)
        if both:
            raise SecAggError(
                f"unmask request asks for both secrets of {both} (listed as survivor and dropped); one-share rule",
                "one_share",
            )  # fmt: skip
        if survivors != self._signed_set:
            raise SecAggError("unmask request names a survivor set other than the one this member signed", "bad_survivors")
        if self.me in dropped or not dropped <= set(self._held):
            raise SecAggError("unmask request counts as dropped a member whose shares this member does not hold", "bad_survivors")
        payload = SurvivorSet(req.survivors).signed_payload(self.setup.context)
        valid = 0
        for site, sig in req.signatures.items():
            if site not in survivors:
                raise SecAggError(f"survivor-set signature by non-survivor {site!r}", "bad_signature")
            crypto.verify(self._signing[site], sig, payload, f"survivor-set signature of {site!r}")
            valid += 1
        self._need(valid, "valid signatures on the survivor set")
        # Every survivor's rows, not only this member's: the others' shares alone may rebuild a survivor's mask.
        self._check_rows({v: self._peers[v].width for v in survivors}, sorted(survivors), "the survivor set")
        return UnmaskShares(
            self.me,
            self_mask={v: self._held[v][1] for v in sorted(survivors)},
            key_seed={v: self._held[v][0] for v in sorted(dropped)},
        )
