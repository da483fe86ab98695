"""The typed records of the protocol: one per stage and direction, checked when built.

Every record validates its own shape (names, byte lengths, vector dtype and
length) in ``__post_init__``, so a state machine never sees a malformed one;
the wire layer (part 2) builds them from decoded messages and gets the same
checks. ``Context`` names the run a message belongs to; every signature,
every HKDF ``info`` and every AEAD associated-data string is built from it
(``Context.label``), so nothing from another plan, round, retry or cluster
verifies here (replays are refused by construction).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from fltac_secure.errors import SecAggError
from fltac_secure.secagg.crypto import SEALED_BYTES, SEED_BYTES
from fltac_secure.secagg.qring import QuantRing
from fltac_secure.secagg.ring import Ring

VERSION = b"fltac-secagg-v1"
MAX_SIGNATURE_BYTES = 160
MAX_NAME = 128


def _field(value: str | bytes | int) -> bytes:
    raw = value.encode() if isinstance(value, str) else value if isinstance(value, bytes) else struct.pack(">q", value)
    return struct.pack(">I", len(raw)) + raw


def _name(value: object, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME:
        raise SecAggError(f"{what} must be a site name of 1..{MAX_NAME} characters, got {value!r:.60}", "bad_message")
    return value


def _bytes(value: object, what: str, *, size: int | None = None, most: int | None = None) -> bytes:
    if not isinstance(value, bytes) or (size is not None and len(value) != size) or (most is not None and len(value) > most):
        want = f"{size} bytes" if size is not None else f"at most {most} bytes"
        raise SecAggError(f"{what} must be {want}", "bad_message")
    return value


class Stage(Enum):
    ADVERTISE = "advertise"
    SHARE = "share"
    MASK = "mask"
    CONSISTENCY = "consistency"
    UNMASK = "unmask"
    DONE = "done"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class Context:
    """The run one protocol instance belongs to: plan, round, retry of the round, cluster."""

    plan_hash: str
    round: int
    attempt: int
    cluster: int

    def __post_init__(self) -> None:
        if not isinstance(self.plan_hash, str) or not 0 < len(self.plan_hash) <= MAX_NAME:
            raise SecAggError("context: plan hash must be a non-empty string", "bad_message")
        for what in ("round", "attempt", "cluster"):
            v = getattr(self, what)
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 2**31:
                raise SecAggError(f"context: {what} must be an integer in [0, 2^31), got {v!r:.40}", "bad_message")

    def label(self, purpose: str, *parts: str | bytes | int) -> bytes:
        """Length-prefixed ``version || purpose || plan hash || round || attempt || cluster || parts``."""
        fields = (VERSION, purpose, self.plan_hash, self.round, self.attempt, self.cluster, *parts)
        return b"".join(_field(f) for f in fields)


@dataclass(frozen=True)
class Setup:
    """What the aggregator announces for one cluster: members (ordered), their public weights, t, ring, length."""

    context: Context
    members: tuple[str, ...]
    weights: tuple[float, ...]
    threshold: int
    ring: Ring | QuantRing  # QuantRing: quantised updates (compression) on one common grid
    length: int

    def __post_init__(self) -> None:
        n = len(self.members)
        for m in self.members:
            _name(m, "member")
        if n < 2 or len(set(self.members)) != n:
            raise SecAggError(f"a secure sum needs at least 2 distinct members, got {list(self.members)}", "bad_setup")
        if len(self.weights) != n or not all(math.isfinite(w) and w > 0 for w in self.weights):
            raise SecAggError("setup: one positive, finite weight per member is required", "bad_setup")
        if not isinstance(self.threshold, int) or not n / 2 < self.threshold <= n:
            raise SecAggError(f"setup: threshold {self.threshold} must be above half of {n} members, at most {n}", "bad_setup")
        if not isinstance(self.length, int) or not 0 < self.length <= 2**31:
            raise SecAggError(f"setup: vector length {self.length} out of range", "bad_setup")
        if n > self.ring.capacity():
            raise SecAggError(f"setup: {n} members overflow the ring (capacity {self.ring.capacity()})", "bad_setup")

    def index(self, site: str) -> int:
        """1-based position of ``site``: its Shamir share index and its place in the pairwise mask order."""
        return self.members.index(site) + 1

    @property
    def total_weight(self) -> float:
        return float(sum(self.weights))


@dataclass(frozen=True)
class KeyAdvert:
    """Stage 0, member -> all: the round's two X25519 public keys and the member's head width in the cluster,
    signed with the enrollment key.

    ``width``: the largest label count among the member's slots in the cluster (it uses head rows
    ``0..width-1``). Signed so that the aggregator cannot alter it: every member checks from the signed widths
    that each head row it (or any survivor) uses is summed over at least ``min_cluster_size`` members
    (``rules.lonely_rows``).
    """

    site: str
    c_pk: bytes
    s_pk: bytes
    width: int
    certificate: bytes
    signature: bytes

    def __post_init__(self) -> None:
        _name(self.site, "advert site")
        _bytes(self.c_pk, "advert c_pk", size=32)
        _bytes(self.s_pk, "advert s_pk", size=32)
        if not isinstance(self.width, int) or isinstance(self.width, bool) or not 0 < self.width < 2**31:
            raise SecAggError(f"advert width must be an integer in [1, 2^31), got {self.width!r:.40}", "bad_message")
        _bytes(self.certificate, "advert certificate", most=8192)
        _bytes(self.signature, "advert signature", most=MAX_SIGNATURE_BYTES)

    def signed_payload(self, context: Context) -> bytes:
        return context.label("advertise", self.site, self.c_pk, self.s_pk, self.width)


@dataclass(frozen=True)
class KeyBook:
    """Stage 0 result, aggregator -> members: every advert received (the set U1)."""

    adverts: tuple[KeyAdvert, ...]

    def __post_init__(self) -> None:
        sites = [a.site for a in self.adverts]
        if len(set(sites)) != len(sites):
            raise SecAggError("key book lists a site twice", "bad_message")


def _sealed_map(value: Mapping[str, bytes], what: str) -> None:
    for k, v in value.items():
        _name(k, what)
        _bytes(v, f"{what} ciphertext", size=SEALED_BYTES)


@dataclass(frozen=True)
class SealedShares:
    """Stage 1, member -> aggregator: its shares for each other member, sealed for that member."""

    site: str
    sealed: Mapping[str, bytes]

    def __post_init__(self) -> None:
        _name(self.site, "shares sender")
        _sealed_map(self.sealed, "shares recipient")


@dataclass(frozen=True)
class ShareDelivery:
    """Stage 1 result, aggregator -> one member: the ciphertexts addressed to it, by sender (the set U2)."""

    recipient: str
    sealed: Mapping[str, bytes]

    def __post_init__(self) -> None:
        _name(self.recipient, "delivery recipient")
        _sealed_map(self.sealed, "delivery sender")


@dataclass(frozen=True)
class MaskedInput:
    """Stage 2, member -> aggregator: its encoded weighted vector plus masks (uniform in the ring)."""

    site: str
    vector: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        _name(self.site, "masked input site")
        if not isinstance(self.vector, np.ndarray) or self.vector.ndim != 1 or self.vector.dtype.kind != "u":
            raise SecAggError("masked input must be a 1-d unsigned integer vector", "bad_message")

    def check(self, setup: Setup) -> None:
        if self.vector.dtype != setup.ring.dtype or self.vector.shape != (setup.length,):
            raise SecAggError(
                f"masked input of {self.site!r} is {self.vector.dtype}[{self.vector.size}], expected "
                f"{np.dtype(setup.ring.dtype)}[{setup.length}]", "bad_message",
            )  # fmt: skip
        if not np.array_equal(setup.ring.reduce(self.vector), self.vector):
            raise SecAggError(f"masked input of {self.site!r} holds values wider than the {setup.ring.bits}-bit ring",
                              "bad_message")  # fmt: skip


@dataclass(frozen=True)
class SurvivorSet:
    """Stage 3, aggregator -> survivors: who sent a masked input (the set U3), to be signed."""

    survivors: tuple[str, ...]

    def __post_init__(self) -> None:
        for s in self.survivors:
            _name(s, "survivor")
        if len(set(self.survivors)) != len(self.survivors):
            raise SecAggError("survivor set lists a site twice", "bad_message")

    def signed_payload(self, context: Context) -> bytes:
        return context.label("consistency", *sorted(self.survivors))


@dataclass(frozen=True)
class ConsistencySig:
    """Stage 3, survivor -> aggregator: its signature on the survivor set it was shown."""

    site: str
    signature: bytes

    def __post_init__(self) -> None:
        _name(self.site, "consistency signer")
        _bytes(self.signature, "consistency signature", most=MAX_SIGNATURE_BYTES)


@dataclass(frozen=True)
class UnmaskRequest:
    """Stage 4, aggregator -> survivors: the signed survivor set and the members it counts as dropped."""

    survivors: tuple[str, ...]
    dropped: tuple[str, ...]
    signatures: Mapping[str, bytes]

    def __post_init__(self) -> None:
        SurvivorSet(self.survivors)
        for s in self.dropped:
            _name(s, "dropped member")
        for k, v in self.signatures.items():
            _name(k, "signer")
            _bytes(v, "survivor-set signature", most=MAX_SIGNATURE_BYTES)


@dataclass(frozen=True)
class UnmaskShares:
    """Stage 4, survivor -> aggregator: self-mask seed shares of survivors, key seed shares of dropped members."""

    site: str
    self_mask: Mapping[str, bytes]
    key_seed: Mapping[str, bytes]

    def __post_init__(self) -> None:
        _name(self.site, "unmask sender")
        for what, shares in (("self-mask share", self.self_mask), ("key-seed share", self.key_seed)):
            for k, v in shares.items():
                _name(k, f"{what} owner")
                _bytes(v, what, size=SEED_BYTES)


@dataclass(frozen=True)
class ClusterResult:
    """The aggregator's outcome for one cluster.

    ``total`` is the decoded ring sum, ``sum over survivors of (w_u / W) x_u``;
    ``weight`` is ``sum over survivors of w_u / W``, so ``mean = total / weight``.
    A skipped cluster has no total and a ``reason``; nothing of its members was revealed
    beyond what the stage it stopped at had already sent.
    """

    context: Context
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]
    total: np.ndarray | None = field(default=None, repr=False)
    weight: float = 0.0
    reason: str | None = None

    @property
    def skipped(self) -> bool:
        return self.total is None

    @property
    def mean(self) -> np.ndarray:
        if self.total is None:
            raise SecAggError(f"cluster {self.context.cluster} was not summed: {self.reason}", "skipped")
        return self.total / self.weight
