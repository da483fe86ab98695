"""Quantised updates summed in a ring exactly as wide as a plain quantised upload (compression with secure aggregation).

Every member of a cluster encodes its weighted update ``x_i = sum_s (w_s / W) u_s``
(entries clipped to +-``clip``, the plan's ``compression.secure_clip``) on
ONE integer grid shared by the whole cluster: ``v_i = SR(x_i / clip * L)``
with ``SR`` unbiased stochastic rounding, so ``E[v_i] * clip / L = x_i``.  A
common scale is what lets the integers be summed at all; a per-member scale
would have to be revealed.

Width and grid: the ring is ``b`` bits, the width a plain quantised upload has
(``compression.bits``), and the grid is as fine as that ring allows.  The
weights ``w_s / W`` of all the cluster's slots sum to one (each member checks
its own weight against the setup, and ``W`` is the setup's total), so
``sum_i |x_i| <= clip`` and ``sum_i |x_i| / clip * L <= L``; rounding adds
less than one per member, so ``n`` members' integers sum to at most ``L + n``
in magnitude.  With ``L = 2^(b-1) - 1 - n`` (``n``: the roster, the most
members a cluster can have) the sum fits ``b``-bit two's complement and never
wraps: 8 bits and 10 sites give 117 steps per ``clip``.  (A ring sized for
``n`` members each at full scale would need ``b + ceil(log2 n)`` bits for the
same grid.)  Arithmetic runs in uint32 with the dtype's own wrap-around, and
values are cut to ``b`` bits (``reduce``) before they travel: since ``2^b``
divides ``2^32``, masks that cancel mod ``2^32`` cancel mod ``2^b`` too.  On
the wire each ring element takes exactly ``b`` bits (``pack``).

The bound holds for honest members only: a masked value cannot be inspected,
so a member may send anything in the ring and spoil (never reveal) its
cluster's sum, as with any pairwise-masking protocol without proofs of range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fltac_secure.errors import SecAggError
from fltac_secure.learning.compress import BITS, stochastic_round
from fltac_secure.secagg.ring import clipped_weighted

__all__ = ["QuantRing", "grid_levels", "min_secure_bits"]


def grid_levels(value_bits: int, members: int) -> int:
    """Grid steps per ``clip`` of ``members`` members' sum in a ``value_bits``-bit ring: ``2^(b-1) - 1 - members``."""
    return 2 ** (value_bits - 1) - 1 - members


def min_secure_bits(members: int) -> int | None:
    """The fewest supported bits whose ring leaves ``members`` members at least one grid step (None: none does)."""
    return next((b for b in sorted(BITS) if grid_levels(b, members) >= 1), None)


@dataclass(frozen=True)
class QuantRing:
    """``value_bits``-bit values with common scale ``clip``, summed by up to ``members`` members."""

    value_bits: int
    members: int
    clip: float

    def __post_init__(self) -> None:
        if self.value_bits not in BITS:
            raise SecAggError(f"quantised values of {self.value_bits} bits are not supported; use one of {list(BITS)}")
        if not (math.isfinite(self.clip) and self.clip > 0) or self.members < 1:
            raise SecAggError(f"no quantised ring for clip {self.clip} and {self.members} members", "bad_setup")
        if self.levels < 1:
            fewest = min_secure_bits(self.members)
            raise SecAggError(
                f"{self.members} members' sum does not fit a {self.value_bits}-bit ring with any grid step "
                f"(2^{self.value_bits - 1} - 1 - {self.members} < 1); "
                + (f"use at least {fewest} bits" if fewest else "no supported width holds that many members"),
                "bad_setup",
            )  # fmt: skip

    @property
    def bits(self) -> int:
        """The ring's width: the value bits, as a plain quantised upload."""
        return self.value_bits

    @property
    def dtype(self) -> type[np.unsignedinteger]:
        return np.uint32

    @property
    def levels(self) -> int:
        """Grid steps per ``clip``: the finest grid whose ``members`` members' sum cannot wrap."""
        return grid_levels(self.value_bits, self.members)

    def capacity(self) -> int:
        """The most members whose rounded shares sum without wrapping: the ``members`` the grid was cut for
        (``L + n = 2^(bits-1) - 1``)."""
        return self.members

    def packed_nbytes(self, length: int) -> int:
        return -(-length * self.bits // 8)

    def weighted(self, vectors: list[np.ndarray], weights: list[float], total: float) -> tuple[np.ndarray, int]:
        """Sum of ``clip(u) * w / total`` over one member's slot updates, and how many entries were clipped."""
        return clipped_weighted(vectors, weights, total, self.clip)

    def encode(self, weighted: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Unbiased integers on the cluster's common grid, as ring elements (OS randomness unless a test gives ``rng``)."""
        arr = np.asarray(weighted, dtype=np.float64)
        if not np.all(np.isfinite(arr)) or (arr.size and float(np.max(np.abs(arr))) > self.clip):
            raise SecAggError(f"a weighted update is not finite or exceeds +-{self.clip}; clip before encoding")
        v = stochastic_round(np.clip(arr / self.clip * self.levels, -self.levels, self.levels), rng)
        return self.reduce(v.astype(self.dtype))

    def reduce(self, arr: np.ndarray) -> np.ndarray:
        """Cut ring elements to ``bits`` (mod 2^bits; at most 16 bits, below the uint32 they are computed in)."""
        return arr & self.dtype((1 << self.bits) - 1)

    def signed(self, total: np.ndarray) -> np.ndarray:
        """A ring sum as signed integers (two's complement in ``bits``)."""
        arr = self.reduce(np.asarray(total, dtype=self.dtype))
        s = arr.astype(np.int64)
        return np.where(s >= 1 << (self.bits - 1), s - (1 << self.bits), s)

    def decode(self, total: np.ndarray) -> np.ndarray:
        """The sum of the members' weighted updates: signed integers times ``clip / L`` (float64)."""
        arr = np.asarray(total)
        if arr.dtype != self.dtype:
            raise SecAggError(f"ring sum has dtype {arr.dtype}, expected {np.dtype(self.dtype)}")
        return self.signed(arr).astype(np.float64) * (self.clip / self.levels)

    def pack(self, arr: np.ndarray) -> np.ndarray:
        """Ring elements, ``bits`` each, as little-endian bit fields in bytes (uint8)."""
        vals = np.ascontiguousarray(self.reduce(np.asarray(arr, dtype=self.dtype))).astype("<u8")
        bits = np.unpackbits(vals.view(np.uint8).reshape(-1, 8), axis=1, bitorder="little")[:, : self.bits]
        return np.packbits(bits.reshape(-1), bitorder="little")

    def unpack(self, raw: np.ndarray, length: int) -> np.ndarray:
        """Inverse of ``pack`` for ``length`` elements; refuses a wrong length or non-zero padding bits."""
        data = np.asarray(raw)
        if data.dtype != np.uint8 or data.shape != (self.packed_nbytes(length),):
            raise SecAggError(f"packed ring elements are {data.dtype}[{data.size}], expected "
                              f"uint8[{self.packed_nbytes(length)}] for {length} elements of {self.bits} bits",
                              "bad_message")  # fmt: skip
        bits = np.unpackbits(data, bitorder="little")
        if bits[length * self.bits :].any():
            raise SecAggError("the padding bits after the last packed ring element are not zero", "bad_message")
        fields = np.zeros((length, 64), dtype=np.uint8)
        fields[:, : self.bits] = bits[: length * self.bits].reshape(length, self.bits)
        return np.packbits(fields, axis=1, bitorder="little").view("<u8").reshape(-1).astype(self.dtype)
