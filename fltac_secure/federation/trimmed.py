"""Head-row trimming (``compression.trim_head``) around a round: what the simulator and the roles call.

A slot of a task with ``k`` labels holds its vector in canonical form (head
rows ``>= k`` at the plan's initial head; ``learning.trim``).  It uploads
only its wire part, float32 or quantised (the update of the wire part); the
aggregator untrims with the initial vector, averages each head row over the
members whose task uses it (``learning.aggregate``'s per-entry mean) and
sends each slot the wire part of its new vector, which the slot untrims the
same way.  The expected length of every slot's vector comes from the plan
and that slot's label count, never from what a peer sends.

In the networked roles a site declares each slot's label count in its JOIN
(``labels``, checked by the aggregator against the plan's tasks and kept in
its checkpoint); ``SiteWire`` then turns a site's full vectors into what
travels (ROUND_START, UPDATE, FINAL) and back, at both ends.

What the aggregator learns: a slot's wire length gives away its task's label
count (not its name).  Plans whose tasks all have the same count reveal
nothing new; the trade is documented in ``compression.trim_head``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fltac_secure.learning.adapters import Layout, adapter_layout, initial_vector
from fltac_secure.learning.trim import canonical, trim, untrim, wire_mask, wire_size

if TYPE_CHECKING:
    from fltac_secure.plan import Plan

__all__ = ["SiteWire", "Trimmer", "site_labels", "slot_head_rows"]


def site_labels(plan: Plan, tasks: Sequence[str]) -> list[int] | None:
    """What a site declares in its JOIN under ``compression.trim_head``: its slots' label counts (else None)."""
    return [int(plan.task(t).num_labels) for t in tasks] if plan.compression.trim_head else None


def slot_head_rows(plan: Plan, key_task: Mapping[str, str]) -> dict[str, int]:
    """Each slot's label count (its head rows on the wire) from the plan and the slot's task."""
    return {key: int(plan.task(task).num_labels) for key, task in key_task.items()}


@dataclass(frozen=True)
class Trimmer:
    """The plan's layout and initial vector: all either end needs to trim, untrim and average."""

    layout: Layout
    init: np.ndarray

    @classmethod
    def of(cls, plan: Plan) -> Trimmer:
        return cls(adapter_layout(plan), initial_vector(plan, plan.training.seed))

    def wire(self, vec: np.ndarray, k: int) -> np.ndarray:
        """What a slot of ``k`` labels sends of ``vec``."""
        return trim(self.layout, vec, k)

    def full(self, part: np.ndarray, k: int) -> np.ndarray:
        """The full canonical vector from a received wire part (refused if its length is not ``k``'s)."""
        return untrim(self.layout, part, k, self.init)

    def canonical(self, vec: np.ndarray, k: int) -> np.ndarray:
        return canonical(self.layout, vec, k, self.init)

    def size(self, k: int) -> int:
        return wire_size(self.layout, k)

    def masks(self, rows: Mapping[str, int]) -> dict[str, np.ndarray]:
        """Per slot, the entries it holds (what it weighs in the per-entry cluster mean)."""
        return {key: wire_mask(self.layout, k) for key, k in rows.items()}

    def through_wire(self, vectors: Mapping[str, np.ndarray], rows: Mapping[str, int]) -> dict[str, np.ndarray]:
        """Each vector as the other end rebuilds it from its float32 wire part."""
        return {key: self.full(self.wire(v, rows[key]), rows[key]) for key, v in vectors.items()}


@dataclass(frozen=True)
class SiteWire:
    """How one site's slots travel: whole float32 vectors, or with ``trim_head`` each slot's wire part.

    ``labels`` (slot index -> label count) is the site's declaration, checked against the plan by the
    aggregator; ``trimmer`` is None when the plan does not trim.  Every expected length comes from here,
    never from a peer's message.
    """

    vector_size: int
    trimmer: Trimmer | None = None
    labels: tuple[int, ...] = ()

    @classmethod
    def of(cls, plan: Plan, vector_size: int, labels: Sequence[int] | None,
           trimmer: Trimmer | None = None) -> SiteWire:  # fmt: skip
        """The wire of a site with ``labels`` (None: the plan does not trim); ``trimmer`` shares the initial head."""
        if not plan.compression.trim_head:
            return cls(vector_size)
        if labels is None:
            raise ValueError("compression.trim_head is on: the site's label count per slot is needed")
        return cls(vector_size, trimmer if trimmer is not None else Trimmer.of(plan), tuple(int(k) for k in labels))

    def size(self, i: int) -> int:
        """Numbers slot ``i`` sends or receives."""
        return self.vector_size if self.trimmer is None else self.trimmer.size(self.labels[i])

    def sizes(self, slots: Sequence[int] | Mapping[int, object]) -> dict[int, int] | None:
        """Each slot's wire size, for the message parsers; None when whole vectors travel (the plan's D)."""
        return None if self.trimmer is None else {int(i): self.size(int(i)) for i in slots}

    def out(self, vectors: Mapping[int, np.ndarray]) -> dict[int, np.ndarray]:
        """What travels of each full vector (a float32 copy of the wire part, or the vector itself)."""
        t = self.trimmer
        return dict(vectors) if t is None else {i: t.wire(v, self.labels[i]) for i, v in vectors.items()}

    def back(self, parts: Mapping[int, np.ndarray]) -> dict[int, np.ndarray]:
        """The full canonical vectors of received wire parts (lengths already checked by the parser)."""
        t = self.trimmer
        return dict(parts) if t is None else {i: t.full(p, self.labels[i]) for i, p in parts.items()}
