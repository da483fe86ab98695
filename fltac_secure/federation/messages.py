"""The federation's message kinds, their shape rules, builders and parsers.

Kinds (``->`` shows the direction)::

    JOIN         collab -> agg   meta: slots, counts, last=[round, kind]; tasks only if the plan shares them;
                                 labels (one label count per slot) exactly when compression.trim_head is on
    ROUND_START  agg -> collab   round r; tensors slot/<i> (D,) float32: the vector slot i starts from;
                                 with compression.download_bits < 32 instead qslot/<i> and qscale/<i>: that
                                 vector minus the plan's initial adapter, quantised; meta: bits, block_size, values
    SKETCHES     collab -> agg   round r; tensors sketch/<i> (sketch_dim,) float64; meta: slots, counts
    ASSIGNMENT   agg -> collab   round r; meta: clusters (one id in [0, k) per slot, -1: not assigned)
    UPDATE       collab -> agg   round r; tensors slot/<i> (D,) float32: the trained vectors of the assigned slots;
                                 with compression.bits < 32 instead qslot/<i> uint8 (packed quantised update)
                                 and qscale/<i> float32 (block scales); meta: bits, block_size, values (= D)
    DONE         collab -> agg   round R; the site holds the final adapters (the aggregator may stop)
    FINAL        agg -> collab   round R; tensors slot/<i> (D,) float32; meta: clusters
    ABORT        agg -> collab   the run stopped; meta: reason

With ``compression.trim_head`` every ``slot/<i>`` and ``qslot/<i>`` above
holds slot i's *wire part* (``learning.trim``): ``D_i = lora_size + k_i *
(hidden + 1)`` numbers for a slot whose task has ``k_i`` labels, ``k_i``
from the site's JOIN (each a label count of some task in the plan); the
quantised header's ``values`` is then the list of the ``D_i`` of the slots
sent, in slot order.  The wire length reveals a slot's label count to the
aggregator (and to anyone who sees the TLS record sizes), not its task name.

Checks happen in two places, because the kind registry is process-global and
one process may run several plans (tests do): the registered rules are
plan-independent (tensor names ``slot/<i>`` (float32) or ``sketch/<i>``
(float64), one dimension; no tensors on control kinds), and ``check_*`` functions, called by
the roles with their plan's numbers (``Shapes``), check sizes, slot counts
and value ranges.  Threat answered: a collaborator (or a forged aggregator)
sending vectors of another size, extra slots, negative counts or cluster ids
out of range is refused with a ``ProtocolError`` naming the problem before
any of it reaches the algorithm.

UPDATE is one message per site carrying every slot's vector.  Secure
aggregation (a later issue) replaces exactly this phase by a multi-message
masked-sum exchange among the members of each cluster, relayed by the
aggregator; ASSIGNMENT already tells every slot its cluster, which is all
that exchange needs, and nothing before or after UPDATE changes shape.

Sketches travel as float64, exactly as ``learning.sketch`` computes them:
K-means on float32-rounded sketches can label near-ties differently from the
simulator, and the sketch is tiny (sketch_dim values per slot), so exactness
costs nothing worth saving.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fltac_secure.errors import CompressionError, ProtocolError
from fltac_secure.learning.compress import Quantised, from_wire
from fltac_secure.transport.envelope import KindSpec, Message, kind_spec, no_tensors, register_kind, tensors_like

JOIN = "JOIN"
ROUND_START = "ROUND_START"
SKETCHES = "SKETCHES"
ASSIGNMENT = "ASSIGNMENT"
UPDATE = "UPDATE"
FINAL = "FINAL"
DONE = "DONE"
ABORT = "ABORT"

MAX_SLOTS = 1024
"""A site holds at most this many task slots (bounds tensor counts before sizes are known)."""

_SLOT_RE = re.compile(r"slot/(\d{1,4})")
_SKETCH_RE = re.compile(r"sketch/(\d{1,4})")
_VECTOR_RULE = tensors_like({r"slot/\d{1,4}": (["float32"], 1)})
_QSLOT_RE = re.compile(r"qslot/(\d{1,4})")
_QSCALE_RE = re.compile(r"qscale/(\d{1,4})")
_UPDATE_RULE = tensors_like({r"slot/\d{1,4}": (["float32"], 1), r"qslot/\d{1,4}": (["uint8"], 1),
                             r"qscale/\d{1,4}": (["float32"], 1)})
_SKETCH_RULE = tensors_like({r"sketch/\d{1,4}": (["float64"], 1)})


def register_federation_kinds() -> None:
    """Register the kinds above once per process (idempotent)."""
    rules = {
        JOIN: (no_tensors, 0),
        ROUND_START: (_UPDATE_RULE, 2 * MAX_SLOTS),
        SKETCHES: (_SKETCH_RULE, MAX_SLOTS),
        ASSIGNMENT: (no_tensors, 0),
        UPDATE: (_UPDATE_RULE, 2 * MAX_SLOTS),
        FINAL: (_VECTOR_RULE, MAX_SLOTS),
        DONE: (no_tensors, 0),
        ABORT: (no_tensors, 0),
    }
    for name, (rule, max_tensors) in rules.items():
        try:
            kind_spec(name)
        except ProtocolError:
            counter = update_parameters if name in (UPDATE, ROUND_START) else None
            register_kind(KindSpec(name, rule, max_tensors=max_tensors, count_parameters=counter))


def update_parameters(msg: Message) -> int:
    """The numbers an UPDATE (or a quantised ROUND_START) stands for: float32 elements, plus ``values`` per packed ``qslot`` tensor.

    For the ledger only (before any check, so it never raises): a message whose meta is not a plausible
    quantisation header counts its raw tensor elements.  ``parse_quantised`` checks everything later.
    """
    packed = sorted(((int(m.group(1)), a) for n, a in msg.tensors.items() if (m := _QSLOT_RE.fullmatch(n))),
                    key=lambda t: t[0])
    values = msg.meta.get("values")
    if isinstance(values, int) and not isinstance(values, bool):
        values = [values] * len(packed)
    if (not packed or not isinstance(values, list) or len(values) != len(packed)
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values)):
        return msg.tensor_elements
    plain = sum(int(a.size) for n, a in msg.tensors.items() if _SLOT_RE.fullmatch(n))
    # at most 4 values (2 bits) per byte
    return plain + sum(min(v, 4 * int(a.size)) for v, (_, a) in zip(values, packed, strict=True))


register_federation_kinds()


@dataclass(frozen=True)
class Shapes:
    """The plan's numbers a message is checked against: adapter size D, sketch dim, K."""

    vector_size: int
    sketch_dim: int
    k: int
    secure_sites: int = 0  # roster size when secure aggregation is on: its key books list every member
    ring_bytes: int = 4  # bytes per element of a masked vector
    bits: int = 32  # compression.bits: UPDATE carries quantised updates when below 32
    download_bits: int = 32  # compression.download_bits: ROUND_START carries quantised vectors when below 32
    block_size: int = 256  # compression.block_size

    def max_message_bytes(self, n_slots: int) -> int:
        """The largest legitimate message for a site of ``n_slots`` slots, plus 25% and 1 MiB of headroom.

        ROUND_START, UPDATE and FINAL carry one float32 vector per slot and
        SKETCHES one float64 sketch per slot (each with a safetensors entry of
        a few dozen bytes); JSON headers are small.  A transport limit sized
        from the plan means a peer cannot make the receiver buffer 512 MiB for
        a federation whose messages are a few hundred KiB.
        """
        per_slot = max(max(4, self.ring_bytes) * self.vector_size, 8 * self.sketch_dim) + 256
        body = n_slots * per_slot
        if self.secure_sites:  # a key book: per member and cluster two keys, a signature, names; a certificate each
            body += n_slots * self.secure_sites * 512 + self.secure_sites * 8192
        return body + body // 4 + (1 << 20)


def plan_shapes(plan: Any, vector_size: int) -> Shapes:
    """The Shapes of ``plan`` (a Plan) for adapters of ``vector_size``."""
    sa = plan.secure_aggregation
    return Shapes(vector_size, plan.clustering.sketch_dim, plan.k,
                  secure_sites=len(plan.roster) if sa.enabled else 0, ring_bytes=sa.ring_bits // 8,
                  bits=plan.compression.bits, block_size=plan.compression.block_size,
                  download_bits=plan.compression.download_bits)  # fmt: skip


def message_limit(plan_max_mb: float | None, shapes: Shapes, n_slots: int) -> int:
    """The transport's message size limit: the plan's ``limits.max_message_mb`` if set, else derived."""
    if plan_max_mb is not None:
        return int(plan_max_mb * (1 << 20))
    return shapes.max_message_bytes(n_slots)


def _refuse(msg: Message, what: str, reason: str = "bad_shape") -> ProtocolError:
    return ProtocolError(f"{msg.kind} from {msg.sender!r} (round {msg.round}): {what}", reason)


def _indexed(msg: Message, pattern: re.Pattern[str], slots: Sequence[int],
             size: int | Mapping[int, int]) -> dict[int, np.ndarray]:
    """Tensors ``<prefix>/<i>`` for exactly the slot indices ``slots``, each of ``size`` (or ``size[i]``) elements."""
    found: dict[int, np.ndarray] = {}
    for name, arr in msg.tensors.items():
        m = pattern.fullmatch(name)
        if m is None:
            raise _refuse(msg, f"unexpected tensor {name!r}", "bad_tensors")
        found[int(m.group(1))] = arr
    if sorted(found) != sorted(slots):
        raise _refuse(msg, f"expected tensors for slots {sorted(slots)}, got {sorted(found)}", "bad_tensors")
    for i, arr in found.items():
        want = size if isinstance(size, int) else size[i]
        if arr.shape != (want,):
            raise _refuse(msg, f"slot {i} has shape {arr.shape}, expected ({want},) for this plan")
    return {i: np.asarray(found[i]) for i in sorted(found)}


def _int_list(msg: Message, key: str, n: int, lo: int, hi: int) -> list[int]:
    raw = msg.meta.get(key)
    if not isinstance(raw, list) or len(raw) != n:
        raise _refuse(msg, f"meta {key!r} must be a list of {n} integers", "bad_meta")
    if not all(isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi for v in raw):
        raise _refuse(msg, f"meta {key!r} holds values outside [{lo}, {hi}]: {raw[:8]}", "bad_meta")
    return [int(v) for v in raw]


# -- JOIN ----------------------------------------------------------------------


@dataclass(frozen=True)
class Join:
    """A site's announcement: how many slots, their sample counts, and what it last handled."""

    counts: list[int]
    last_round: int
    last_kind: str
    tasks: list[str] | None = None
    labels: list[int] | None = None  # compression.trim_head: each slot's label count

    @property
    def slots(self) -> int:
        return len(self.counts)


def join_meta(counts: Sequence[int], last_round: int, last_kind: str, tasks: Sequence[str] | None,
              labels: Sequence[int] | None = None) -> dict:
    meta: dict = {"slots": len(counts), "counts": [int(c) for c in counts], "last": [int(last_round), last_kind]}
    if tasks is not None:
        meta["tasks"] = list(tasks)
    if labels is not None:
        meta["labels"] = [int(k) for k in labels]
    return meta


def parse_join(msg: Message, *, share_task_names: bool, label_counts: Collection[int] | None = None) -> Join:
    """The JOIN's content, checked: 1..MAX_SLOTS slots, counts >= 1, task names only if allowed.

    ``label_counts`` (with ``compression.trim_head``: the label counts of the plan's tasks) makes ``labels``
    required, one per slot, each one of them; None (trimming off) refuses a JOIN that carries ``labels``.
    """
    n = msg.meta.get("slots")
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_SLOTS:
        raise _refuse(msg, f"meta 'slots' must be an integer in 1..{MAX_SLOTS}", "bad_meta")
    counts = _int_list(msg, "counts", n, 1, 2**31 - 1)
    last = msg.meta.get("last")
    if not (isinstance(last, list) and len(last) == 2 and isinstance(last[0], int) and isinstance(last[1], str)):
        raise _refuse(msg, "meta 'last' must be [round, kind]", "bad_meta")
    tasks = msg.meta.get("tasks")
    if tasks is not None:
        if not share_task_names:
            raise _refuse(msg, "carries task names but the plan has privacy.share_task_names off", "bad_meta")
        if not (isinstance(tasks, list) and len(tasks) == n and all(isinstance(t, str) for t in tasks)):
            raise _refuse(msg, "meta 'tasks' must list one name per slot", "bad_meta")
    return Join(counts, int(last[0]), str(last[1]), tasks, _join_labels(msg, n, label_counts))


def _join_labels(msg: Message, n: int, label_counts: Collection[int] | None) -> list[int] | None:
    if label_counts is None:
        if "labels" in msg.meta:
            raise _refuse(msg, "declares label counts ('labels') but the plan has compression.trim_head off", "bad_meta")
        return None
    allowed = sorted({int(k) for k in label_counts})
    if "labels" not in msg.meta:
        raise _refuse(msg, "declares no label counts ('labels'), which compression.trim_head needs", "bad_meta")
    labels = _int_list(msg, "labels", n, 1, 2**31 - 1)
    strange = sorted(set(labels) - set(allowed))
    if strange:
        raise _refuse(msg, f"declares label count(s) {strange} that no task of the plan has (tasks have {allowed})",
                      "bad_meta")
    return labels


# -- vectors (ROUND_START, UPDATE, FINAL) and sketches ----------------------------


def vector_tensors(vectors: Mapping[int, np.ndarray]) -> dict[str, np.ndarray]:
    """``slot/<i>`` -> float32 vector, for ROUND_START, UPDATE and FINAL."""
    return {f"slot/{i}": np.ascontiguousarray(v, dtype=np.float32) for i, v in vectors.items()}


def parse_vectors(msg: Message, slots: Sequence[int], shapes: Shapes,
                  sizes: Mapping[int, int] | None = None) -> dict[int, np.ndarray]:
    """One (D,) float32 vector for each slot index in ``slots`` (ROUND_START, UPDATE, FINAL); with
    ``sizes`` (``compression.trim_head``: slot -> its wire size, from the plan) ``(sizes[i],)`` instead."""
    if msg.kind not in (ROUND_START, UPDATE, FINAL):
        raise _refuse(msg, "does not carry adapter vectors", "bad_kind")
    return _indexed(msg, _SLOT_RE, slots, shapes.vector_size if sizes is None else sizes)


def _values(shapes: Shapes, slots: Sequence[int], sizes: Mapping[int, int] | None) -> int | list[int]:
    """The quantised header's ``values``: the plan's D, or (trimmed) each sent slot's wire size in slot order."""
    return shapes.vector_size if sizes is None else [int(sizes[i]) for i in sorted(slots)]


def _bits(kind: str, shapes: Shapes) -> int:
    """The plan's bits for quantised vectors of ``kind``: UPDATE uploads, ROUND_START downloads."""
    return shapes.download_bits if kind == ROUND_START else shapes.bits


def quantised_message_parts(updates: Mapping[int, Quantised], shapes: Shapes,
                            sizes: Mapping[int, int] | None = None, kind: str = UPDATE) -> tuple[dict, dict]:
    """(meta, tensors) of a compressed UPDATE or ROUND_START: ``qslot/<i>`` packed values, ``qscale/<i>``
    block scales."""
    bits = _bits(kind, shapes)
    meta = {"bits": bits, "block_size": shapes.block_size, "values": _values(shapes, list(updates), sizes)}
    tensors: dict[str, np.ndarray] = {}
    for i, q in sorted(updates.items()):
        n = shapes.vector_size if sizes is None else sizes[i]
        if (q.n, q.bits, q.block_size) != (n, bits, shapes.block_size):
            raise CompressionError(f"slot {i}'s {kind} vector is {q.n} values at {q.bits} bits in blocks of "
                                   f"{q.block_size}; the plan says {n} at {bits} in blocks of {shapes.block_size}")
        tensors[f"qslot/{i}"] = np.ascontiguousarray(q.packed, dtype=np.uint8)
        tensors[f"qscale/{i}"] = np.ascontiguousarray(q.scales, dtype=np.float32)
    return meta, tensors


def parse_quantised(msg: Message, slots: Sequence[int], shapes: Shapes,
                    sizes: Mapping[int, int] | None = None) -> dict[int, Quantised]:
    """A compressed UPDATE's (or ROUND_START's) quantised vector for each slot in ``slots``, checked against
    the plan's sizes.

    The header must repeat the plan's bits (``compression.bits`` for UPDATE, ``download_bits`` for
    ROUND_START), block size and vector size (trimmed: ``sizes``, each slot's wire size); every length is
    computed from the plan, never taken from the peer, and ``from_wire`` refuses NaN/negative scales and
    values off the grid.
    """
    if msg.kind not in (UPDATE, ROUND_START):
        raise _refuse(msg, "does not carry quantised vectors", "bad_kind")
    bits = _bits(msg.kind, shapes)
    want = {"bits": bits, "block_size": shapes.block_size, "values": _values(shapes, slots, sizes)}
    got = {k: msg.meta.get(k) for k in want}
    if got != want:
        raise _refuse(msg, f"quantisation header {got} does not match this plan's {want} (compression section)",
                      "bad_meta")
    packed = {n: a for n, a in msg.tensors.items() if not _QSCALE_RE.fullmatch(n)}
    scales = {n: a for n, a in msg.tensors.items() if _QSCALE_RE.fullmatch(n)}
    values = _indexed_any(msg, packed, _QSLOT_RE, slots)
    blocks = _indexed_any(msg, scales, _QSCALE_RE, slots)
    out: dict[int, Quantised] = {}
    for i in sorted(values):
        try:
            n = shapes.vector_size if sizes is None else sizes[i]
            out[i] = from_wire(values[i], blocks[i], n, bits, shapes.block_size)
        except CompressionError as exc:
            raise _refuse(msg, f"slot {i}: {exc}") from None
    return out


def _indexed_any(msg: Message, tensors: Mapping[str, np.ndarray], pattern: re.Pattern[str],
                 slots: Sequence[int]) -> dict[int, np.ndarray]:
    """Tensors named by ``pattern`` for exactly the slot indices ``slots`` (any length: checked later)."""
    found: dict[int, np.ndarray] = {}
    for name, arr in tensors.items():
        m = pattern.fullmatch(name)
        if m is None:
            raise _refuse(msg, f"unexpected tensor {name!r}", "bad_tensors")
        found[int(m.group(1))] = np.asarray(arr)
    if sorted(found) != sorted(slots):
        raise _refuse(msg, f"expected {pattern.pattern.split('/')[0]} tensors for slots {sorted(slots)}, "
                      f"got {sorted(found)}", "bad_tensors")
    return found


def sketches_message_parts(sketches: Mapping[int, np.ndarray], counts: Mapping[int, int]) -> tuple[dict, dict]:
    """(meta, tensors) of a SKETCHES message; a slot out of privacy budget is simply absent."""
    idx = sorted(sketches)
    meta = {"slots": idx, "counts": [int(counts[i]) for i in idx]}
    return meta, {f"sketch/{i}": np.ascontiguousarray(sketches[i], dtype=np.float64) for i in idx}


def parse_sketches(msg: Message, n_slots: int, shapes: Shapes) -> tuple[dict[int, np.ndarray], dict[int, int]]:
    """Sketches (sketch_dim,) of the slots the site trained this round, and their sample counts (>= 1)."""
    raw = msg.meta.get("slots")
    if not isinstance(raw, list) or len(raw) > n_slots:
        raise _refuse(msg, f"meta 'slots' must list at most {n_slots} slot indices", "bad_meta")
    idx = _int_list(msg, "slots", len(raw), 0, n_slots - 1)
    if len(set(idx)) != len(idx):
        raise _refuse(msg, "meta 'slots' repeats a slot index", "bad_meta")
    sketches = _indexed(msg, _SKETCH_RE, idx, shapes.sketch_dim)
    counts = _int_list(msg, "counts", len(idx), 1, 2**31 - 1)
    return sketches, dict(zip(idx, counts, strict=True))


# -- ASSIGNMENT / FINAL clusters ------------------------------------------------


def parse_clusters(msg: Message, n_slots: int, shapes: Shapes) -> list[int]:
    """Cluster id per slot, each in [0, k) or -1 (slot not assigned this round)."""
    return _int_list(msg, "clusters", n_slots, -1, shapes.k - 1)


def parse_abort(msg: Message) -> str:
    reason = msg.meta.get("reason")
    return reason if isinstance(reason, str) else "the aggregator stopped the run"


def check_round(msg: Message, expected: int) -> None:
    if msg.round != expected:
        raise _refuse(msg, f"is for round {msg.round}, expected {expected}", "wrong_round")

