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

Quantised downloads (``compression.download_bits`` < 32, ``Downlink``): at the
start of round r the server hands slot s its vector ``v`` as ``q = Q(v - v0)``,
``v0`` the plan's initial adapter (every site regenerates it; with trim_head
the wire parts of both), and both ends take ``v0 + dequant(q)`` as the slot's
start: the server's round runs on those starts (``started``), so uploads are
rebuilt and secure sums unmasked against exactly what the site holds.  The
rounding draws come from ``ServerState.rounding_key`` (random, made at round 0,
checkpointed) through HMAC-SHA256 of (round, slot): unpredictable from the plan,
and the same bytes when a ROUND_START is sent again after a restart.  The server
keeps the exact means (``keep_exact``): a slot's noise is fresh every round and
never adds up, and FINAL hands out the exact float32 vectors.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fltac_secure.errors import CompressionError
from fltac_secure.learning.compress import Quantised, dequantise, error_feedback, quantise, wire_nbytes

if TYPE_CHECKING:
    from fltac_secure.federation.rounds import ServerState
    from fltac_secure.federation.trimmed import Trimmer
    from fltac_secure.plan import Plan

__all__ = ["ROUNDING_KEY_BYTES", "CompressedUpdate", "Downlink", "compress_results", "download_nbytes",
           "keep_exact", "new_rounding_key", "rebuild_vector", "rebuild_vectors", "update_nbytes"]

ROUNDING_KEY_BYTES = 32

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


# -- quantised downloads (compression.download_bits) ---------------------------------------------------


def new_rounding_key(plan: Plan) -> bytes | None:
    """A fresh random key for the download rounding (``ServerState.rounding_key``); None when downloads are
    float32."""
    return secrets.token_bytes(ROUNDING_KEY_BYTES) if plan.compression.download else None


def download_nbytes(plan: Plan, vector_size: int) -> int:
    """Data bytes of one slot's ROUND_START vector: ``4 D`` in float32, or its packed values and block scales."""
    c = plan.compression
    return wire_nbytes(vector_size, c.download_bits, c.block_size) if c.download else 4 * vector_size


def _rounding_rng(key: bytes, round_index: int, slot: str) -> np.random.Generator:
    digest = hmac.new(key, f"fltac-download/{round_index}/{slot}".encode(), hashlib.sha256).digest()
    return np.random.default_rng(np.frombuffer(digest, dtype=np.uint32))


@dataclass(frozen=True)
class Downlink:
    """Quantised ROUND_START vectors, the same at both ends: what the server sends and what a site starts from.

    ``trimmer`` (the plan's layout and initial vector) is shared with head trimming; ``k`` below is a slot's
    label count with ``compression.trim_head`` (its wire part), else None (the whole vector).
    """

    plan: Plan
    trimmer: Trimmer

    @classmethod
    def of(cls, plan: Plan, trimmer: Trimmer | None = None) -> Downlink:
        from fltac_secure.federation.trimmed import Trimmer

        if not plan.compression.download:
            raise CompressionError("compression.download_bits is 32 (off): ROUND_START carries float32 vectors")
        return cls(plan, trimmer if trimmer is not None else Trimmer.of(plan))

    def _part(self, vec: np.ndarray, k: int | None) -> np.ndarray:
        return np.asarray(vec, np.float32) if k is None else self.trimmer.wire(vec, k)

    def send(self, key: bytes, round_index: int, slot: str, vector: np.ndarray, k: int | None) -> Quantised:
        """What the server sends slot ``slot`` in round ``round_index``: ``Q(vector - v0)``, drawn from ``key``."""
        c = self.plan.compression
        update = (self._part(vector, k) - self._part(self.trimmer.init, k)).astype(np.float32)
        return quantise(update, c.download_bits, c.block_size, rng=_rounding_rng(key, round_index, slot))

    def receive(self, q: Quantised, k: int | None) -> np.ndarray:
        """The full vector a slot starts from: ``v0 + dequant(q)`` (untrimmed with the initial head)."""
        part = rebuild_vector(self._part(self.trimmer.init, k), q)
        return part if k is None else self.trimmer.full(part, k)

    def started(self, state: ServerState, head_rows: Mapping[str, int] | None,
                ) -> tuple[ServerState, dict[str, Quantised]]:  # fmt: skip
        """The state the round runs on (every slot's vector as its site will hold it) and what each slot is sent."""
        if state.rounding_key is None:
            raise CompressionError("compression.download_bits is on but the server state has no rounding key")
        sent = {key: self.send(state.rounding_key, state.round, key, vec, None if head_rows is None else head_rows[key])
                for key, vec in state.vectors.items()}
        vectors = {key: self.receive(q, None if head_rows is None else head_rows[key]) for key, q in sent.items()}
        return dataclasses.replace(state, vectors=vectors), sent


def keep_exact(new: ServerState, started: ServerState, exact: ServerState) -> ServerState:
    """After a round run on ``started``: a slot whose vector the round did not replace gets its exact vector
    back (so a slot that sat out is not rounded again next round)."""
    vectors = {key: exact.vectors[key] if key in exact.vectors and vec is started.vectors.get(key) else vec
               for key, vec in new.vectors.items()}
    return dataclasses.replace(new, vectors=vectors)
