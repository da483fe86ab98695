"""Quantised updates summed in a ring just wide enough (compression with secure aggregation).

Every member of a cluster encodes its weighted update ``sum_i (w_i / W) u_i``
(entries clipped to +-``clip``, the plan's ``compression.secure_clip``) on
ONE integer grid shared by the whole cluster: ``v = SR(x / clip * L)`` with
``L = 2^(b-1) - 1`` and ``SR`` unbiased stochastic rounding, so ``E[v] * clip
/ L = x``.  A common scale is what lets the integers be summed at all; a
per-member scale would have to be revealed.

Width: ``n`` members' values sum to at most ``n L`` in magnitude, below
``2^(b - 1 + ceil(log2 n))``, so a ring of ``b + ceil(log2 n)`` bits holds the
sum without wrapping (``n``: the roster, the most members a cluster can have;
8-bit values and up to 256 members: 16 bits).  Arithmetic runs in uint32
(uint64 above 32 bits) with the dtype's own wrap-around, and values are cut
to the ring's width (``reduce``) before they travel: since ``2^width``
divides ``2^32``, masks that cancel mod ``2^32`` cancel mod ``2^width`` too.
On the wire each ring element takes exactly ``width`` bits (``pack``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fltac_secure.errors import SecAggError
from fltac_secure.learning.compress import BITS, levels, stochastic_round
from fltac_secure.secagg.ring import clipped_weighted

__all__ = ["QuantRing", "quant_width"]


def quant_width(value_bits: int, members: int) -> int:
    """Ring bits for ``members`` values of ``value_bits`` each: ``value_bits + ceil(log2 members)``."""
    return value_bits + max(0, math.ceil(math.log2(max(1, members))))


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
        if self.bits > 64:
            raise SecAggError(f"{self.members} members of {self.value_bits}-bit values need a {self.bits}-bit ring; "
                              "at most 64", "bad_setup")

    @property
    def bits(self) -> int:
        return quant_width(self.value_bits, self.members)

    @property
    def dtype(self) -> type[np.unsignedinteger]:
        return np.uint32 if self.bits <= 32 else np.uint64

    @property
    def levels(self) -> int:
        return levels(self.value_bits)

    def capacity(self) -> int:
        """The most members whose values sum without wrapping: ``n L <= 2^(bits-1) - 1``."""
        return (2 ** (self.bits - 1) - 1) // self.levels

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
        """Cut ring elements to ``bits`` (mod 2^bits)."""
        if self.bits == 8 * np.dtype(self.dtype).itemsize:
            return arr
        return arr & self.dtype((1 << self.bits) - 1)

    def signed(self, total: np.ndarray) -> np.ndarray:
        """A ring sum as signed integers (two's complement in ``bits``)."""
        arr = self.reduce(np.asarray(total, dtype=self.dtype))
        if self.bits == 64:
            return arr.view(np.int64)
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
