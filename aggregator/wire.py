"""What travels of each member's slots, on the aggregator's side (``compression.trim_head``).

Without trimming every slot sends and receives its whole float32 vector (or
quantised update) and everything here passes vectors through.  With
``compression.download_bits`` the round runs on the quantised starts
(``started``) and ROUND_START carries them (``start_parts``).  With it, a
site declares each slot's label count in its JOIN; ``MemberWires`` checks
the declaration against the plan's tasks (``fm.parse_join``), builds each
member's ``SiteWire`` from it, parses UPDATEs at the declared wire sizes and
gives ``server_aggregate`` its ``head_rows``.  The expected length of every
slot's vector comes from the plan and the declaration, never from the
message; the aggregator's state, checkpoint and exports stay full-length
canonical vectors.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from aggregator.phases import Member
from fltac_secure.federation import messages as fm
from fltac_secure.federation.compressed import Downlink, rebuild_vectors
from fltac_secure.federation.rounds import ServerState, slot_key
from fltac_secure.federation.trimmed import SiteWire, Trimmer
from fltac_secure.learning.compress import Quantised
from fltac_secure.plan import Plan
from fltac_secure.transport.envelope import Message


class MemberWires:
    """The plan's trimming facts once (the initial head, the tasks' label counts); a ``SiteWire`` per member."""

    def __init__(self, plan: Plan, vector_size: int) -> None:
        self.plan, self.vector_size = plan, int(vector_size)
        trim = plan.compression.trim_head
        self.trimmer = Trimmer.of(plan) if trim else None
        self.label_counts: list[int] | None = sorted({t.num_labels for t in plan.tasks}) if trim else None
        """What a JOIN's ``labels`` may hold (None: trimming off, a JOIN must carry no ``labels``)."""
        self.downlink = Downlink.of(plan, self.trimmer) if plan.compression.download else None
        self.sent: dict[str, Quantised] = {}
        """compression.download_bits: this round's quantised ROUND_START vector per slot (``started``)."""

    def of(self, member: Member) -> SiteWire:
        return SiteWire.of(self.plan, self.vector_size, member.labels, self.trimmer)

    def parse_update(self, msg: Message, member: Member, wanted: Sequence[int], shapes: fm.Shapes) -> Any:
        """An UPDATE's content: full canonical vectors, or (compression) the quantised updates of the wire parts."""
        wire = self.of(member)
        sizes = wire.sizes(wanted)
        if self.plan.compression.enabled:
            return fm.parse_quantised(msg, wanted, shapes, sizes)
        return wire.back(fm.parse_vectors(msg, wanted, shapes, sizes))

    def rebuild(self, member: Member, starts: Mapping[int, np.ndarray],
                updates: Mapping[int, Quantised]) -> dict[int, np.ndarray]:
        """Each slot's trained vector from the full start this aggregator sent and the site's quantised update
        (of the wire part, with trimming); CompressionError if an update does not fit."""
        wire = self.of(member)
        parts = wire.out({i: starts[i] for i in updates})
        rebuilt = rebuild_vectors({str(i): parts[i] for i in updates}, {str(i): q for i, q in updates.items()})
        return wire.back({i: rebuilt[str(i)] for i in updates})

    def head_rows(self, members: Mapping[str, Member], keys: Iterable[str]) -> dict[str, int] | None:
        """``server_aggregate``'s head_rows: each slot's declared label count (None without trimming)."""
        if self.trimmer is None:
            return None
        rows = {slot_key(s, i): k for s, m in members.items() for i, k in enumerate(m.labels or [])}
        return {key: rows[key] for key in keys}

    def started(self, state: ServerState, members: Mapping[str, Member]) -> ServerState:
        """``state`` itself, or with ``compression.download_bits`` the state the round runs on: every slot's
        vector as its site rebuilds it from the quantised ROUND_START (kept in ``sent``)."""
        if self.downlink is None:
            return state
        started, self.sent = self.downlink.started(state, self.head_rows(members, list(state.vectors)))
        return started

    def start_parts(self, member: Member, state: ServerState, site: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """ROUND_START's quantisation header and tensors for ``site``: each slot's wire part in float32, or
        with ``download_bits`` its quantised difference from the initial adapter (``started`` first)."""
        n = member.slots
        if self.downlink is None:
            return {}, self.vector_tensors(member, {i: state.vectors[slot_key(site, i)] for i in range(n)})
        return fm.quantised_message_parts({i: self.sent[slot_key(site, i)] for i in range(n)},
                                          fm.plan_shapes(self.plan, self.vector_size),
                                          self.of(member).sizes(range(n)), kind=fm.ROUND_START)

    def vector_tensors(self, member: Member, vectors: Mapping[int, Any]) -> dict[str, Any]:
        """``slot/<i>`` tensors of ROUND_START and FINAL: each slot's wire part of its full vector."""
        return fm.vector_tensors(self.of(member).out(vectors))
