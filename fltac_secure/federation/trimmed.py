"""Head-row trimming (``compression.trim_head``) around a round: what the simulator (and later the roles) call.

A slot of a task with ``k`` labels holds its vector in canonical form (head
rows ``>= k`` at the plan's initial head; ``learning.trim``).  It uploads
only its wire part, float32 or quantised (the update of the wire part); the
aggregator untrims with the initial vector, averages each head row over the
members whose task uses it (``learning.aggregate``'s per-entry mean) and
sends each slot the wire part of its new vector, which the slot untrims the
same way.  The expected length of every slot's vector comes from the plan
and that slot's label count, never from what a peer sends.

The networked roles do not implement it yet (the aggregator would need each
slot's label count, which only the site knows): ``refuse_in_roles`` stops
them at start with a message rather than letting them send whole heads under
a plan that says otherwise.

What the aggregator learns: a slot's wire length gives away its task's label
count (not its name).  Plans whose tasks all have the same count reveal
nothing new; the trade is documented in ``compression.trim_head``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fltac_secure.errors import ConfigError
from fltac_secure.learning.adapters import Layout, adapter_layout, initial_vector
from fltac_secure.learning.trim import canonical, trim, untrim, wire_mask, wire_size

if TYPE_CHECKING:
    from fltac_secure.plan import Plan

__all__ = ["Trimmer", "refuse_in_roles", "slot_head_rows"]


def refuse_in_roles(plan: Plan, role: str) -> None:
    """Stop a networked role under ``compression.trim_head`` (simulator only, for now)."""
    if plan.compression.trim_head:
        raise ConfigError(
            f"compression.trim_head is on in plan {plan.federation!r}, but the {role} role does not send trimmed "
            "heads yet (only `fltac simulate` does); set compression.trim_head: false to run the federation")


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
