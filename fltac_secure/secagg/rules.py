"""The plan's rules for a cluster's secure sum: who takes part, the threshold, the ring, the weights."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from fltac_secure.errors import SecAggError
from fltac_secure.secagg.records import Context, Setup
from fltac_secure.secagg.qring import QuantRing
from fltac_secure.secagg.ring import Ring

if TYPE_CHECKING:
    from fltac_secure.plan.schema import Plan, SecureAggregation


def threshold_for(members: int, fraction: float) -> int:
    """t = floor(fraction x n) + 1, at most n: strictly more than ``fraction`` of the members."""
    if not 0.5 <= fraction < 1:
        raise SecAggError(f"threshold fraction {fraction} must be in [0.5, 1)", "bad_setup")
    return min(members, math.floor(fraction * members) + 1)


def ring_of(section: SecureAggregation) -> Ring:
    """The plan's fixed-point ring (``fractional_bits`` is resolved when the plan is validated)."""
    assert section.fractional_bits is not None
    return Ring(section.ring_bits, section.fractional_bits, section.clip)


def ring_for(plan: Plan) -> Ring | QuantRing:
    """The ring a cluster sums in: with ``compression.bits`` < 32 quantised updates on the common grid
    (``compression.secure_clip``) in a ring wide enough for the whole roster, else the fixed-point ring."""
    c = plan.compression
    if c.enabled:
        return QuantRing(c.bits, len(plan.roster), c.secure_clip)
    return ring_of(plan.secure_aggregation)


def cluster_setup(
    section: SecureAggregation, context: Context, member_weights: Mapping[str, float], length: int,
    ring: Ring | QuantRing | None = None,
) -> Setup | str:
    """The setup for one cluster from its members' public weights, or why the cluster is not securely summed."""
    members = sorted(member_weights)
    if len(members) < section.min_cluster_size:
        return (f"{len(members)} member site(s), fewer than min_cluster_size {section.min_cluster_size}: "
                "members keep their own adapters this round")  # fmt: skip
    return Setup(
        context=context, members=tuple(members), weights=tuple(float(member_weights[m]) for m in members),
        threshold=threshold_for(len(members), section.threshold), ring=ring or ring_of(section), length=length,
    )  # fmt: skip


def member_weights(slot_sites: Sequence[str], slot_weights: Sequence[float]) -> dict[str, float]:
    """A site with several slots in one cluster takes part once, with the sum of its slots' weights."""
    out: dict[str, float] = {}
    for site, w in zip(slot_sites, slot_weights, strict=True):
        out[site] = out.get(site, 0.0) + float(w)
    return out


def lonely_rows(widths: Mapping[str, int], min_cluster_size: int) -> dict[str, int]:
    """Members whose head rows would be summed over fewer than ``min_cluster_size`` members, with how many.

    ``widths``: member -> its width (it uses head rows ``0..width-1``; rows above are zero or values the
    aggregator already knows). Row ``j`` of the sum holds real contributions only from members wider than
    ``j``, so member u's widest row is summed over the members whose width is at least u's; when those are
    fewer than ``min_cluster_size``, the sum reveals that row of u to the aggregator (the other
    members' parts of it are known). Empty when every row is summed over enough members.
    """
    out = {}
    for site, w in widths.items():
        peers = sum(1 for v in widths.values() if v >= w)
        if peers < min_cluster_size:
            out[site] = peers
    return out
