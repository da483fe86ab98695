"""Quantised UPDATEs (plan section ``compression``): what the simulator and the roles both call.

Site side (``compress_results``): each trained slot sends its *update*, the
trained vector minus the vector the round started from, quantised
(``learning.compress``: unbiased stochastic rounding, per-block scales).
With ``compression.error_feedback`` the site adds the residual its last
upload left out and keeps the new one (the caller stores it: in memory in
the simulator, in the collaborator's workspace in the roles).

Server side (``rebuild_vectors``): start + dequantised update, the vector the
cluster mean is taken over.  The server uses the start *it* sent (its state),
never anything the site claims about it.

The clustering sketch is still computed on the site's real vector: a sketch
is ``sketch_dim`` numbers per slot, tiny next to the adapter, and rounding it
would perturb clustering for no saving worth having.

Under secure aggregation none of this runs either: the members quantise inside
the protocol (``secagg.qring``) and ``secure_round.secure_outcome`` adds the
starts back.  With ``compression.bits`` 32 nothing here runs: the vectors travel as float32,
bit for bit as before the section existed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fltac_secure.errors import CompressionError
from fltac_secure.learning.compress import Quantised, dequantise, error_feedback, quantise, wire_nbytes

__all__ = ["CompressedUpdate", "compress_results", "rebuild_vector", "rebuild_vectors", "update_nbytes"]

@dataclass(frozen=True)
class CompressedUpdate:
    """One slot's quantised update and, with error feedback, the residual the site keeps after sending it."""

    key: str
    q: Quantised
    residual: np.ndarray | None


def update_nbytes(plan: object, vector_size: int) -> int:
    """Data bytes of one slot's upload: ``4 D`` in float32, or the packed values plus the block scales; under
    secure aggregation the masked vector (ring elements; packed to the quantised ring's width with
    compression), without the protocol's keys and shares.  ``vector_size`` is what travels: with
    ``compression.trim_head`` a slot's wire part, or under secure aggregation its cluster's ``K_c``-wide
    length (one masked vector per member per cluster)."""
    c, sa = plan.compression, plan.secure_aggregation  # type: ignore[attr-defined]
    if sa.enabled:
        from fltac_secure.secagg.rules import ring_for

        ring = ring_for(plan)  # type: ignore[arg-type]
        return -(-vector_size * ring.bits // 8)
    return 4 * vector_size if not c.enabled else wire_nbytes(vector_size, c.bits, c.block_size)


def compress_results(
    plan: object,
    vectors: Mapping[str, np.ndarray],
    starts: Mapping[str, np.ndarray],
    residuals: Mapping[str, np.ndarray],
    *,
    rng: np.random.Generator | None = None,
) -> dict[str, CompressedUpdate]:
    """Quantise every slot's update ``vectors[key] - starts[key]`` (plus its residual, with error feedback).

    ``rng`` (tests only) is used for every slot in ``vectors``' order; by default each slot draws fresh
    OS randomness.
    """
    c = plan.compression  # type: ignore[attr-defined]
    if not c.enabled:
        raise CompressionError("compression.bits is 32 (off); send the float32 vectors instead")
    out: dict[str, CompressedUpdate] = {}
    for key, vec in vectors.items():
        update = (np.asarray(vec, np.float32) - np.asarray(starts[key], np.float32)).astype(np.float32)
        if c.error_feedback:
            q, res = error_feedback(update, residuals.get(key), c.bits, c.block_size, rng=rng)
            out[key] = CompressedUpdate(key, q, res)
        else:
            out[key] = CompressedUpdate(key, quantise(update, c.bits, c.block_size, rng=rng), None)
    return out


def rebuild_vector(start: np.ndarray, q: Quantised) -> np.ndarray:
    """``start + dequant(q)`` as float32; refused if the result is not finite (a scale near float32's max)."""
    base = np.asarray(start, np.float32)
    if base.shape != (q.n,):
        raise CompressionError(f"a quantised update of {q.n} values cannot be added to a start of shape {base.shape}")
    out = (base + dequantise(q)).astype(np.float32)
    if not np.isfinite(out).all():
        raise CompressionError("start + update overflows float32; the update's scales are not plausible")
    return out


def rebuild_vectors(starts: Mapping[str, np.ndarray], updates: Mapping[str, Quantised]) -> dict[str, np.ndarray]:
    """Each slot's trained vector as the server sees it: the start it sent plus the dequantised update."""
    missing = sorted(set(updates) - set(starts))
    if missing:
        raise CompressionError(f"no start vector for slot(s) {missing[:4]}; the server only rebuilds what it started")
    return {key: rebuild_vector(starts[key], q) for key, q in updates.items()}
