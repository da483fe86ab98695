"""`fltac audit`: what crossed the wire, and what other methods would have sent.

Totals are grouped by round, site, direction or message kind. The comparison
counts, for the same (round, collaborator) participations seen in the ledger,
what FedIT (one shared LoRA adapter + one head per site, at a given rank) and
full fine-tuning of the same base model would have moved, up and down.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from fltac_secure.federation.ledger import LedgerEntry

GROUPINGS = ("round", "site", "kind", "direction")
CONTROL_KINDS = frozenset({"HELLO", "WELCOME", "REJECT", "ACK", "NACK", "PING", "PONG", "BYE"})
"""Transport messages: they carry round 0 whatever round is in progress."""
SESSION_KINDS = CONTROL_KINDS | {"JOIN"}
"""Grouped by round as ``session``: connection upkeep, not part of any round."""
FINAL_KINDS = frozenset({"FINAL", "DONE"})
"""Grouped by round as ``final``: the hand-out after the last round (its header round is the plan's ``rounds``)."""
SESSION, FINAL = "session", "final"
MASKED_KIND = "SA_MASKED"


def is_secagg_overhead(kind: str) -> bool:
    """Secure aggregation's own messages (keys, sealed shares, signatures, unmasking shares).

    Their tensors are bytes, not parameters: the comparison with FedIT and full
    fine-tuning leaves them out and ``secure_overhead`` reports them. The masked
    vectors (SA_MASKED) are the adapters themselves, masked, and count as parameters.
    """
    return kind.startswith("SA_") and kind != MASKED_KIND


@dataclass
class Totals:
    messages: int = 0
    elements: int = 0
    payload_bytes: int = 0
    wire_bytes: int = 0

    def add(self, e: LedgerEntry) -> None:
        self.messages += 1
        self.elements += 0 if is_secagg_overhead(e.kind) else e.elements  # bytes of keys and shares, not parameters
        self.payload_bytes += e.payload_bytes
        self.wire_bytes += e.wire_bytes

    def as_dict(self) -> dict[str, int]:
        """The totals under the names every audit output uses (table, CSV and JSON)."""
        return {
            "messages": self.messages,
            "parameters": self.elements,
            "payload_bytes": self.payload_bytes,
            "wire_bytes": self.wire_bytes,
        }


def collaborator_of(entry: LedgerEntry, roster: Sequence[str]) -> str:
    """The collaborator a message belongs to, whichever side wrote the ledger."""
    return entry.peer if entry.peer in roster else entry.site


def round_label(entry: LedgerEntry) -> str:
    """The round a message belongs to, numbered as the plan's rounds (0 .. rounds - 1),
    or ``final`` (the hand-out after the last round) or ``session`` (connection upkeep)."""
    if entry.kind in SESSION_KINDS:
        return SESSION
    if entry.kind in FINAL_KINDS:
        return FINAL
    return str(entry.round)


def _group_order(key: str) -> tuple[int, int, str]:
    """Rounds in numeric order, then ``final``, then ``session``; other groups by name."""
    if key.isdigit():
        return (0, int(key), "")
    return (1, {FINAL: 0, SESSION: 1}.get(key, -1), key)


def group_totals(entries: Iterable[LedgerEntry], by: str, roster: Sequence[str]) -> dict[str, Totals]:
    """Totals per value of ``by`` (round, site, kind, direction), plus nothing else."""
    if by not in GROUPINGS:
        raise ValueError(f"--by must be one of {', '.join(GROUPINGS)}, got {by!r}")
    out: dict[str, Totals] = defaultdict(Totals)
    for e in entries:
        key = {
            "round": round_label(e),
            "site": collaborator_of(e, roster),
            "kind": e.kind,
            "direction": e.direction,
        }[by]
        out[key].add(e)
    if by == "round":
        return dict(sorted(out.items(), key=lambda kv: _group_order(kv[0])))
    return dict(sorted(out.items(), key=lambda kv: (len(kv[0]), kv[0])))


def total(entries: Iterable[LedgerEntry]) -> Totals:
    t = Totals()
    for e in entries:
        t.add(e)
    return t


def participations(entries: Iterable[LedgerEntry], roster: Sequence[str]) -> set[tuple[int, str]]:
    """(round, collaborator) pairs that took part in one of the plan's rounds (not counting
    connection upkeep or the final hand-out)."""
    return {(e.round, collaborator_of(e, roster)) for e in entries if round_label(e).isdigit()}


@dataclass(frozen=True)
class ModelSizes:
    """Parameters per message for each method (tensor elements)."""

    fltac_adapter: int  # one FL-TAC task adapter (LoRA + masked head), untrimmed
    fedit_adapter: int  # one FedIT adapter at the comparison rank (LoRA + head over all labels)
    full_model: int  # full fine-tuning: every base parameter + head over all labels
    fedit_rank: int
    fltac_slots: Mapping[str, int] = field(default_factory=dict)
    """compression.trim_head: task -> what one slot of it sends (LoRA + its own head rows); empty: untrimmed."""


@dataclass
class Comparison:
    participations: int
    actual_up: int
    actual_down: int
    fedit_up: int
    fedit_down: int
    full_up: int
    full_down: int
    sizes: ModelSizes
    extra: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        actual = self.actual_up + self.actual_down
        fedit = self.fedit_up + self.fedit_down
        full = self.full_up + self.full_down
        return {
            "participations": self.participations,
            "fltac": {"up": self.actual_up, "down": self.actual_down, "total": actual},
            f"fedit_r{self.sizes.fedit_rank}": {"up": self.fedit_up, "down": self.fedit_down, "total": fedit},
            "full_finetuning": {"up": self.full_up, "down": self.full_down, "total": full},
            "ratio_fltac_to_fedit": actual / fedit if fedit else None,
            "ratio_fltac_to_full": actual / full if full else None,
            "sizes": {
                "fltac_adapter": self.sizes.fltac_adapter,
                "fedit_adapter": self.sizes.fedit_adapter,
                "full_model": self.sizes.full_model,
                **({"fltac_slot_wire": dict(self.sizes.fltac_slots)} if self.sizes.fltac_slots else {}),
            },
        }


def compare(entries: Sequence[LedgerEntry], roster: Sequence[str], sizes: ModelSizes) -> Comparison:
    """Actual parameters up/down against FedIT and full fine-tuning for the same participations.

    "up" is collaborator -> aggregator. For every (round, site) pair in which
    parameters went up, FedIT and full fine-tuning would have sent one model
    up; for every pair in which parameters came down (including the final
    hand-out after the last round), one model down.
    """
    agg_side = all(e.peer in roster for e in entries) and bool(entries)
    up = down = 0
    up_pairs: set[tuple[int, str]] = set()
    down_pairs: set[tuple[int, str]] = set()
    for e in entries:
        if is_secagg_overhead(e.kind):
            continue
        is_up = (e.direction != "sent") if agg_side else (e.direction == "sent")
        pair = (e.round, collaborator_of(e, roster))
        if is_up:
            up += e.elements
            if e.elements:
                up_pairs.add(pair)
        else:
            down += e.elements
            if e.elements:
                down_pairs.add(pair)
    return Comparison(
        participations=len(participations(entries, roster)),
        actual_up=up,
        actual_down=down,
        fedit_up=len(up_pairs) * sizes.fedit_adapter,
        fedit_down=len(down_pairs) * sizes.fedit_adapter,
        full_up=len(up_pairs) * sizes.full_model,
        full_down=len(down_pairs) * sizes.full_model,
        sizes=sizes,
    )


def secure_overhead(entries: Iterable[LedgerEntry], roster: Sequence[str]) -> dict[str, object] | None:
    """Bytes secure aggregation added (its own messages, both directions), in all, per round and per site.

    ``masked_payload_bytes`` is the masked vectors' payload, the secure round's counterpart of
    UPDATE. None when the ledger holds no secure aggregation traffic.
    """
    rows = [e for e in entries if e.kind.startswith("SA_")]
    if not rows:
        return None
    per_round: dict[str, Totals] = defaultdict(Totals)
    per_site: dict[str, Totals] = defaultdict(Totals)
    overhead, masked = Totals(), Totals()
    for e in rows:
        if e.kind == MASKED_KIND:
            masked.add(e)
            continue
        overhead.add(e)
        per_round[str(e.round)].add(e)
        per_site[collaborator_of(e, roster)].add(e)
    return {
        "overhead_messages": overhead.messages,
        "overhead_payload_bytes": overhead.payload_bytes,
        "overhead_wire_bytes": overhead.wire_bytes,
        "masked_payload_bytes": masked.payload_bytes,
        "per_round": {k: v.as_dict() for k, v in sorted(per_round.items(), key=lambda kv: int(kv[0]))},
        "per_site": {k: v.as_dict() for k, v in sorted(per_site.items())},
    }


def bytes_per_parameter(entries: Iterable[LedgerEntry], roster: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per kind that carries parameters: parameters, tensor bytes, bits per parameter and bytes saved
    against float32 (4 bytes per parameter; negative where a kind is wider, e.g. float64 sketches).

    Tensor bytes are the data alone (no headers), so they equal what the shapes and bit widths imply.
    Ledger lines written before tensor bytes were recorded are left out.
    """
    per: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for e in entries:
        if is_secagg_overhead(e.kind) or e.elements <= 0 or e.tensor_bytes < 0:
            continue
        per[e.kind][0] += e.elements
        per[e.kind][1] += e.tensor_bytes
    return {kind: {"parameters": p, "tensor_bytes": b, "bits_per_parameter": 8 * b / p,
                   "float32_bytes": 4 * p, "bytes_saved": 4 * p - b}
            for kind, (p, b) in sorted(per.items())}


def trim_savings(sizes: ModelSizes) -> dict[str, object] | None:
    """What head trimming saves per slot and round, each way: task -> numbers sent, numbers saved against the
    untrimmed adapter, and that as a fraction.  None without trimming.  (The ledger's counts are of the wire
    parts already; this says what they would have been untrimmed.)"""
    if not sizes.fltac_slots:
        return None
    full = sizes.fltac_adapter
    return {"untrimmed_slot": full,
            "per_task": {t: {"wire": n, "saved": full - n, "fraction_saved": (full - n) / full if full else 0.0}
                         for t, n in sorted(sizes.fltac_slots.items())}}


def fedit_bytes(cmp: Comparison, upload_bytes: int, download_bytes: int | None = None,
                final_pairs: int = 0) -> dict[str, int]:
    """FedIT's tensor bytes for the same participations: float32 both ways (as the paper counts it), and at
    the same compression as FL-TAC's: uploads at ``upload_bytes`` per adapter, downloads at ``download_bytes``
    (None: float32) except the ``final_pairs`` final hand-outs, which are float32 as FL-TAC's FINAL is."""
    adapter = cmp.sizes.fedit_adapter
    up_pairs = cmp.fedit_up // adapter if adapter else 0
    down = 4 * cmp.fedit_down
    if download_bytes is not None and adapter:
        rounds = cmp.fedit_down // adapter - final_pairs
        down = rounds * download_bytes + final_pairs * 4 * adapter
    return {"float32_up": 4 * cmp.fedit_up, "float32_down": 4 * cmp.fedit_down,
            "compressed_up": up_pairs * upload_bytes, "compressed_down": down}


def final_pairs(entries: Iterable[LedgerEntry], roster: Sequence[str]) -> int:
    """(round, site) pairs in which a FINAL carried parameters (the final hand-out, float32)."""
    return len({(e.round, collaborator_of(e, roster)) for e in entries if e.kind == "FINAL" and e.elements})
