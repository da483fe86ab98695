"""The secure aggregation stages on the wire: one message per site per stage, all its clusters in it.

Kinds (``->`` shows the direction); every one carries ``meta.attempt``, the
number of the protocol run it belongs to, and its round in the envelope::

    ASSIGNMENT    agg -> collab  (extended) meta members/<c>, weights/<c>, length/<c> per summed cluster,
                                 skipped [c...]
    SA_KEYS       collab -> agg  cert; <c>/c_pk, <c>/s_pk (32 B), <c>/width (4 B), <c>/sig   stage 0: signed keys
    SA_KEYBOOK    agg -> collab  cert/<site>; <c>/c_pk/<site>, <c>/s_pk/<site>, <c>/width/<site>, <c>/sig/<site>
    SA_SHARES     collab -> agg  <c>/sealed/<recipient> (60 B)                     stage 1: sealed shares
    SA_DELIVERY   agg -> collab  <c>/sealed/<sender>
    SA_MASKED     collab -> agg  <c>/masked (D,) uint32 (uint64 in a 64-bit ring)  stage 2: masked input
                                 (compression: uint8, D ring elements of the QuantRing's width packed;
                                 meta values = D, values/<c> per cluster)
    SA_SURVIVORS  agg -> collab  meta survivors/<c>                                stage 3: consistency
    SA_CONSISTENCY collab -> agg <c>/sig
    SA_UNMASK     agg -> collab  meta survivors/<c>, dropped/<c>; <c>/sig/<site>   stage 4: unmask
    SA_REVEAL     collab -> agg  <c>/self/<owner>, <c>/key/<owner> (16 B)

Binary fields travel as 1-d uint8 tensors (meta holds JSON scalars only); the
registered rules fix names, dtypes and dimensions, the parsers below rebuild
the typed records of ``fltac_secure.secagg.records`` (whose constructors
check every byte length) and check the cluster set and the vector size
against the plan. The aggregator relays ciphertexts it cannot open: a
sealed share is addressed to one member and authenticated with the context.
A member's answer may omit a cluster of its stage (it left that cluster, e.g.
``lonely_rows``): the aggregator counts it as dropped there; SA_KEYS must
carry every cluster of the site's assignment.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from fltac_secure.errors import ProtocolError, SecAggError
from fltac_secure.plan.schema import NAME_RE
from fltac_secure.secagg.qring import QuantRing
from fltac_secure.secagg.records import (
    ConsistencySig, KeyAdvert, KeyBook, MaskedInput, SealedShares, ShareDelivery, SurvivorSet, UnmaskRequest,
    UnmaskShares,
)  # fmt: skip
from fltac_secure.secagg.ring import Ring
from fltac_secure.transport.envelope import KindSpec, Message, kind_spec, register_kind, tensors_like

SA_KEYS, SA_KEYBOOK = "SA_KEYS", "SA_KEYBOOK"
SA_SHARES, SA_DELIVERY = "SA_SHARES", "SA_DELIVERY"
SA_MASKED = "SA_MASKED"
SA_SURVIVORS, SA_CONSISTENCY = "SA_SURVIVORS", "SA_CONSISTENCY"
SA_UNMASK, SA_REVEAL = "SA_UNMASK", "SA_REVEAL"
ANSWER = {SA_KEYBOOK: SA_SHARES, SA_DELIVERY: SA_MASKED, SA_SURVIVORS: SA_CONSISTENCY, SA_UNMASK: SA_REVEAL}
KINDS = (SA_KEYS, SA_KEYBOOK, SA_SHARES, SA_DELIVERY, SA_MASKED, SA_SURVIVORS, SA_CONSISTENCY, SA_UNMASK, SA_REVEAL)
MAX_TENSORS = 1 << 16

_SITE = NAME_RE.strip("^$")
_C = r"\d{1,6}"
_BYTES = (["uint8"], 1)
_RULES: dict[str, dict[str, tuple[list[str], int]]] = {
    SA_KEYS: {"cert": _BYTES, rf"{_C}/(c_pk|s_pk|width|sig)": _BYTES},
    SA_KEYBOOK: {rf"cert/{_SITE}": _BYTES, rf"{_C}/(c_pk|s_pk|width|sig)/{_SITE}": _BYTES},
    SA_SHARES: {rf"{_C}/sealed/{_SITE}": _BYTES},
    SA_DELIVERY: {rf"{_C}/sealed/{_SITE}": _BYTES},
    SA_MASKED: {rf"{_C}/masked": (["uint32", "uint64", "uint8"], 1)},
    SA_SURVIVORS: {},
    SA_CONSISTENCY: {rf"{_C}/sig": _BYTES},
    SA_UNMASK: {rf"{_C}/sig/{_SITE}": _BYTES},
    SA_REVEAL: {rf"{_C}/(self|key)/{_SITE}": _BYTES},
}
_NAME = re.compile(rf"(?P<c>{_C})/(?P<field>[a-z_]+)(?:/(?P<site>{_SITE}))?")


def register_secure_kinds() -> None:
    """Register the SA_* kinds once per process (idempotent)."""
    for name, rule in _RULES.items():
        try:
            kind_spec(name)
        except ProtocolError:
            counter = masked_parameters if name == SA_MASKED else None
            register_kind(KindSpec(name, tensors_like(rule), max_tensors=MAX_TENSORS, count_parameters=counter))


def masked_parameters(msg: Message) -> int:
    """The numbers an SA_MASKED stands for (for the ledger; never raises): packed vectors count ``values``
    each (at most 4 per byte, as quantised values are at least 2 bits), plain ones their elements."""
    out = 0
    for name, arr in msg.tensors.items():
        values = msg.meta.get(f"values/{name.split('/', 1)[0]}", msg.meta.get("values"))
        packed = arr.dtype == np.uint8 and isinstance(values, int) and not isinstance(values, bool) and values >= 0
        out += min(values, 4 * int(arr.size)) if packed else int(arr.size)  # type: ignore[type-var]
    return out


register_secure_kinds()


def _refuse(msg: Message, what: str, reason: str = "bad_secagg") -> ProtocolError:
    return ProtocolError(f"{msg.kind} from {msg.sender!r} (round {msg.round}): {what}", reason)


def _u8(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8).copy()


def _grouped(msg: Message) -> dict[int, dict[str, dict[str | None, np.ndarray]]]:
    """Tensors ``<c>/<field>[/<site>]`` as ``{c: {field: {site or None: array}}}``."""
    out: dict[int, dict[str, dict[str | None, np.ndarray]]] = {}
    for name, arr in msg.tensors.items():
        m = _NAME.fullmatch(name)
        if m is None:
            continue  # cert and cert/<site>: read where needed
        out.setdefault(int(m["c"]), {}).setdefault(m["field"], {})[m["site"]] = arr
    return out


def attempt_of(msg: Message) -> int:
    value = msg.meta.get("attempt")
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**31:
        raise _refuse(msg, "meta 'attempt' must be an integer in [0, 2^31)")
    return value


def _records(msg: Message, build: Any, expected: Iterable[int] | None, *, some: bool = False) -> dict[int, Any]:
    """Records per cluster; ``expected``: the clusters it must carry (``some``: at most those; a member that
    left a cluster answers only for the others)."""
    groups = _grouped(msg)
    if expected is not None and not (set(groups) <= set(expected) if some else set(groups) == set(expected)):
        raise _refuse(msg, f"carries clusters {sorted(groups)}, expected {sorted(expected)}")
    try:
        return {c: build(c, fields) for c, fields in sorted(groups.items())}
    except (SecAggError, KeyError, TypeError) as exc:
        raise _refuse(msg, f"malformed secure aggregation record ({exc})") from exc


def _one(fields: dict[str, dict[str | None, np.ndarray]], name: str) -> bytes:
    values = fields[name]
    if list(values) != [None]:
        raise KeyError(name)
    return values[None].tobytes()


def _width(raw: bytes) -> int:
    if len(raw) != 4:
        raise KeyError("width must be 4 bytes")
    return int.from_bytes(raw, "big")


def _by_site(fields: dict[str, dict[str | None, np.ndarray]], name: str) -> dict[str, bytes]:
    values = fields.get(name, {})
    if None in values:
        raise KeyError(name)
    return {str(s): a.tobytes() for s, a in values.items()}


def _message_parts(attempt: int, tensors: dict[str, np.ndarray], meta: dict | None = None) -> dict[str, Any]:
    return {"meta": {"attempt": attempt, **(meta or {})}, "tensors": tensors}


# -- stage 0: keys ----------------------------------------------------------------------


def keys_parts(attempt: int, adverts: Mapping[int, KeyAdvert]) -> dict[str, Any]:
    """SA_KEYS: this site's certificate once, and its signed keys for each cluster."""
    certs = {a.certificate for a in adverts.values()}
    if len(certs) != 1:
        raise SecAggError("a site signs every cluster's keys with one certificate", "internal")
    tensors = {"cert": _u8(certs.pop())}
    for c, a in adverts.items():
        tensors.update({f"{c}/c_pk": _u8(a.c_pk), f"{c}/s_pk": _u8(a.s_pk), f"{c}/width": _u8(a.width.to_bytes(4, "big")),
                        f"{c}/sig": _u8(a.signature)})  # fmt: skip
    return _message_parts(attempt, tensors)


def parse_keys(msg: Message, expected: Iterable[int]) -> dict[int, KeyAdvert]:
    cert = msg.tensors.get("cert")
    if cert is None:
        raise _refuse(msg, "carries no certificate")

    def build(c: int, f: dict) -> KeyAdvert:
        return KeyAdvert(msg.sender, _one(f, "c_pk"), _one(f, "s_pk"), _width(_one(f, "width")), cert.tobytes(),
                         _one(f, "sig"))  # fmt: skip

    return _records(msg, build, expected)


def keybook_parts(attempt: int, books: Mapping[int, KeyBook]) -> dict[str, Any]:
    tensors: dict[str, np.ndarray] = {}
    for c, book in books.items():
        for a in book.adverts:
            tensors[f"cert/{a.site}"] = _u8(a.certificate)
            tensors.update({f"{c}/c_pk/{a.site}": _u8(a.c_pk), f"{c}/s_pk/{a.site}": _u8(a.s_pk),
                            f"{c}/width/{a.site}": _u8(a.width.to_bytes(4, "big")),
                            f"{c}/sig/{a.site}": _u8(a.signature)})  # fmt: skip
    return _message_parts(attempt, tensors)


def parse_keybook(msg: Message) -> dict[int, KeyBook]:
    certs = {name.split("/", 1)[1]: arr.tobytes() for name, arr in msg.tensors.items() if name.startswith("cert/")}

    def build(c: int, f: dict) -> KeyBook:
        c_pk, s_pk, sig = _by_site(f, "c_pk"), _by_site(f, "s_pk"), _by_site(f, "sig")
        width = _by_site(f, "width")
        if not set(c_pk) == set(s_pk) == set(width) == set(sig) <= set(certs):
            raise KeyError("every advert needs c_pk, s_pk, width, sig and a certificate")
        return KeyBook(tuple(KeyAdvert(s, c_pk[s], s_pk[s], _width(width[s]), certs[s], sig[s]) for s in sorted(c_pk)))

    return _records(msg, build, None)


# -- stage 1: shares ----------------------------------------------------------------------


def shares_parts(attempt: int, sealed: Mapping[int, SealedShares | ShareDelivery]) -> dict[str, Any]:
    """SA_SHARES (site -> agg, by recipient) or SA_DELIVERY (agg -> site, by sender)."""
    tensors = {f"{c}/sealed/{peer}": _u8(blob) for c, rec in sealed.items() for peer, blob in rec.sealed.items()}
    return _message_parts(attempt, tensors)


def parse_shares(msg: Message, expected: Iterable[int]) -> dict[int, SealedShares]:
    return _records(msg, lambda c, f: SealedShares(msg.sender, _by_site(f, "sealed")), expected, some=True)


def parse_delivery(msg: Message, me: str) -> dict[int, ShareDelivery]:
    return _records(msg, lambda c, f: ShareDelivery(me, _by_site(f, "sealed")), None)


# -- stage 2: masked inputs ------------------------------------------------------------------


def masked_parts(attempt: int, inputs: Mapping[int, MaskedInput], ring: Ring | QuantRing | None = None) -> dict[str, Any]:
    """SA_MASKED; with a ``QuantRing`` each vector is packed to the ring's width (meta ``values``: its length,
    and ``values/<c>`` per cluster, as clusters differ in length with compression.trim_head)."""
    if isinstance(ring, QuantRing):
        lengths = {int(m.vector.size) for m in inputs.values()}
        meta: dict[str, Any] = {f"values/{c}": int(m.vector.size) for c, m in inputs.items()}
        if len(lengths) == 1:
            meta["values"] = lengths.pop()
        return _message_parts(attempt, {f"{c}/masked": ring.pack(m.vector) for c, m in inputs.items()}, meta)
    return _message_parts(attempt, {f"{c}/masked": np.ascontiguousarray(m.vector) for c, m in inputs.items()})


def parse_masked(msg: Message, expected: Iterable[int], length: int | Mapping[int, int],
                 ring: Ring | QuantRing) -> dict[int, MaskedInput]:  # fmt: skip
    """Masked vectors of ``length`` ring elements (per cluster with compression.trim_head; unpacked from the
    QuantRing's width; lengths from the aggregator's setups, never from the message)."""
    dtype = ring.dtype

    def build(c: int, f: dict) -> MaskedInput:
        n = length if isinstance(length, int) else length[c]
        arr = f["masked"][None]
        if isinstance(ring, QuantRing):
            return MaskedInput(msg.sender, ring.unpack(arr, n))
        if arr.dtype != np.dtype(dtype) or arr.shape != (n,):
            raise TypeError(f"cluster {c}: masked vector is {arr.dtype}[{arr.size}], the plan needs "
                            f"{np.dtype(dtype)}[{n}]")  # fmt: skip
        return MaskedInput(msg.sender, np.asarray(arr))

    return _records(msg, build, expected, some=True)


# -- stage 3: consistency ------------------------------------------------------------------------


def _names(msg: Message, key: str) -> tuple[str, ...]:
    raw = msg.meta.get(key)
    if not isinstance(raw, list) or not all(isinstance(s, str) for s in raw):
        raise _refuse(msg, f"meta {key!r} must list site names")
    return tuple(raw)


def _listed(msg: Message, prefix: str) -> list[int]:
    out = []
    for key in msg.meta:
        if key.startswith(prefix + "/"):
            c = key.split("/", 1)[1]
            if not re.fullmatch(_C, c):
                raise _refuse(msg, f"meta key {key!r} does not name a cluster")
            out.append(int(c))
    return sorted(out)


def survivors_parts(attempt: int, shown: Mapping[int, SurvivorSet]) -> dict[str, Any]:
    return _message_parts(attempt, {}, {f"survivors/{c}": list(s.survivors) for c, s in shown.items()})


def parse_survivors(msg: Message) -> dict[int, SurvivorSet]:
    try:
        return {c: SurvivorSet(_names(msg, f"survivors/{c}")) for c in _listed(msg, "survivors")}
    except SecAggError as exc:
        raise _refuse(msg, str(exc)) from exc


def consistency_parts(attempt: int, sigs: Mapping[int, ConsistencySig]) -> dict[str, Any]:
    return _message_parts(attempt, {f"{c}/sig": _u8(s.signature) for c, s in sigs.items()})


def parse_consistency(msg: Message, expected: Iterable[int]) -> dict[int, ConsistencySig]:
    return _records(msg, lambda c, f: ConsistencySig(msg.sender, _one(f, "sig")), expected, some=True)


# -- stage 4: unmask ------------------------------------------------------------------------------


def unmask_parts(attempt: int, requests: Mapping[int, UnmaskRequest]) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    tensors: dict[str, np.ndarray] = {}
    for c, req in requests.items():
        meta[f"survivors/{c}"], meta[f"dropped/{c}"] = list(req.survivors), list(req.dropped)
        tensors.update({f"{c}/sig/{s}": _u8(sig) for s, sig in req.signatures.items()})
    return _message_parts(attempt, tensors, meta)


def parse_unmask(msg: Message) -> dict[int, UnmaskRequest]:
    groups = _grouped(msg)
    out = {}
    try:
        for c in _listed(msg, "survivors"):
            sigs = _by_site(groups.get(c, {}), "sig")
            out[c] = UnmaskRequest(_names(msg, f"survivors/{c}"), _names(msg, f"dropped/{c}"), sigs)
    except (SecAggError, KeyError) as exc:
        raise _refuse(msg, f"malformed unmask request ({exc})") from exc
    return out


def reveal_parts(attempt: int, shares: Mapping[int, UnmaskShares]) -> dict[str, Any]:
    tensors: dict[str, np.ndarray] = {}
    for c, rec in shares.items():
        tensors.update({f"{c}/self/{o}": _u8(v) for o, v in rec.self_mask.items()})
        tensors.update({f"{c}/key/{o}": _u8(v) for o, v in rec.key_seed.items()})
    return _message_parts(attempt, tensors)


def parse_reveal(msg: Message, expected: Iterable[int]) -> dict[int, UnmaskShares]:
    return _records(msg, lambda c, f: UnmaskShares(msg.sender, _by_site(f, "self"), _by_site(f, "key")), expected,
                    some=True)  # fmt: skip


# -- the setup in ASSIGNMENT, own vectors in ROUND_START and FINAL ------------------------------


def assignment_meta(attempt: int, setups: Mapping[int, Any], skipped: Iterable[int]) -> dict[str, Any]:
    """ASSIGNMENT's secure part for one site: members, weights and vector length of its summed clusters, its
    skipped ones."""
    meta: dict[str, Any] = {"attempt": attempt, "skipped": sorted(skipped)}
    for c, setup in setups.items():
        meta[f"members/{c}"], meta[f"weights/{c}"] = list(setup.members), [float(w) for w in setup.weights]
        meta[f"length/{c}"] = int(setup.length)
    return meta


SetupMeta = tuple[tuple[str, ...], tuple[float, ...], int]
"""One cluster's announced setup: members, their weights, the masked vector's length."""


def parse_assignment_setup(msg: Message) -> tuple[int, dict[int, SetupMeta], list[int]]:
    """(attempt, {cluster: (members, weights, length)}, skipped clusters) from a secure ASSIGNMENT.

    Only the form is checked here; the member checks the length against what the plan and its own slots
    imply (``collaborator.secure``)."""
    attempt = attempt_of(msg)
    out = {}
    for c in _listed(msg, "members"):
        weights = msg.meta.get(f"weights/{c}")
        members = _names(msg, f"members/{c}")
        if not isinstance(weights, list) or len(weights) != len(members) or not all(
            isinstance(w, int | float) and not isinstance(w, bool) for w in weights
        ):
            raise _refuse(msg, f"meta 'weights/{c}' must list one number per member")
        length = msg.meta.get(f"length/{c}")
        if not isinstance(length, int) or isinstance(length, bool) or not 0 < length <= 2**31:
            raise _refuse(msg, f"meta 'length/{c}' must be the cluster's vector length (a positive integer)")
        out[c] = (members, tuple(float(w) for w in weights), length)
    skipped = msg.meta.get("skipped", [])
    if not isinstance(skipped, list) or not all(isinstance(c, int) and not isinstance(c, bool) for c in skipped):
        raise _refuse(msg, "meta 'skipped' must list cluster ids")
    return attempt, out, [int(c) for c in skipped]


def own_meta(own: Mapping[int, int]) -> dict[str, Any]:
    """ROUND_START/FINAL: slots that start from (or end with) their own vector of the given round."""
    idx = sorted(own)
    return {"own": idx, "own_round": [int(own[i]) for i in idx]} if idx else {}


def parse_own(msg: Message, n_slots: int) -> dict[int, int]:
    idx, rounds = msg.meta.get("own", []), msg.meta.get("own_round", [])
    ok = (isinstance(idx, list) and isinstance(rounds, list) and len(idx) == len(rounds)
          and all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < n_slots for i in idx)
          and all(isinstance(r, int) and not isinstance(r, bool) and 0 <= r < msg.round for r in rounds))  # fmt: skip
    if not ok:
        raise _refuse(msg, "meta 'own'/'own_round' must list slot indices and earlier rounds")
    return dict(zip(idx, rounds, strict=True))
