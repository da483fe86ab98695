"""Fixed-point encoding of weighted adapter vectors in the ring Z_(2^bits).

Each member encodes its share of the cluster's weighted mean: the clipped
vector times its normalised weight, ``round((w_u / W) * clip(x_u, +-C) * 2^f)``
as a two's-complement integer mod ``2^bits``. numpy's unsigned wrap-around
is the ring, so masks add and cancel with plain ``+`` and ``-``.

Bound (why the sum never wraps): each member's integer has magnitude at most
``C * 2^f + 1/2`` (its weight is at most 1), so ``n`` members sum to less than
``n * (C * 2^f + 1)``; the ring holds it while that is below ``2^(bits-1)``.
The check counts every member at full weight, so even a member that lies
about its weight cannot make an honest cluster's sum wrap.

Precision: each member rounds once, an error of at most ``2^-(f+1)``; the
decoded sum of ``n`` members is within ``n * 2^-(f+1)`` of the exact sum of
the clipped, weighted vectors, plus float64 rounding of the result
(``error_bound``; that term matters only in a 64-bit ring).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fltac_secure.errors import SecAggError

__all__ = ["Ring", "capacity", "max_fractional_bits"]

_DTYPES = {32: (np.uint32, np.int32), 64: (np.uint64, np.int64)}


def _fits(bits: int, clip: float, fractional_bits: int, members: int) -> bool:
    return members * (clip * 2.0**fractional_bits + 1.0) < 2.0 ** (bits - 1)


def capacity(bits: int, clip: float, fractional_bits: int) -> int:
    """The most members whose values in +-``clip`` with ``fractional_bits`` sum in a ``bits`` ring without wrapping."""
    return max(0, math.ceil(2.0 ** (bits - 1) / (clip * 2.0**fractional_bits + 1.0)) - 1)


def max_fractional_bits(bits: int, clip: float, members: int) -> int:
    """The most fractional bits (at most bits - 2) for which ``members`` clipped values sum without wrapping (0: none fit)."""
    if bits not in _DTYPES or not clip > 0 or members < 1:
        raise SecAggError(f"no ring for bits={bits}, clip={clip}, members={members}")
    f = min(bits - 2, max(0, bits - 2 - math.ceil(math.log2(clip)) - math.ceil(math.log2(members))))
    while f + 1 <= bits - 2 and _fits(bits, clip, f + 1, members):
        f += 1
    while f > 0 and not _fits(bits, clip, f, members):
        f -= 1
    return f if _fits(bits, clip, f, members) else 0


def clipped_weighted(vectors: list[np.ndarray], weights: list[float], total: float,
                     clip: float) -> tuple[np.ndarray, int]:  # fmt: skip
    """Sum of ``clip(x) * w / total`` over one member's slots (float64), and how many entries were clipped."""
    if not vectors or len(vectors) != len(weights) or not total > 0:
        raise SecAggError("a member needs at least one vector, one weight per vector and a positive total weight")
    acc = np.zeros(np.shape(vectors[0]), dtype=np.float64)
    clipped = 0
    for vec, w in zip(vectors, weights, strict=True):
        arr = np.asarray(vec, dtype=np.float64)
        if arr.shape != acc.shape or not np.all(np.isfinite(arr)):
            raise SecAggError("a member's vectors differ in shape or hold NaN/Inf; refusing to encode them")
        clipped += int(np.count_nonzero(np.abs(arr) > clip))
        acc += (w / total) * np.clip(arr, -clip, clip)
    return np.clip(acc, -clip, clip), clipped


@dataclass(frozen=True)
class Ring:
    """A ``bits``-wide ring with ``fractional_bits`` of fixed point and values clipped to +-``clip``."""

    bits: int = 32
    fractional_bits: int = 20
    clip: float = 8.0

    def __post_init__(self) -> None:
        if self.bits not in _DTYPES:
            raise SecAggError(f"ring width {self.bits} bits is not supported; use 32 or 64")
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise SecAggError(f"clip must be a positive number, got {self.clip}")
        if not 1 <= self.fractional_bits < self.bits - 1:
            raise SecAggError(f"fractional_bits must be in [1, {self.bits - 2}], got {self.fractional_bits}")
        if not _fits(self.bits, self.clip, self.fractional_bits, 1):
            raise SecAggError(
                f"clip {self.clip} with {self.fractional_bits} fractional bits does not fit a {self.bits}-bit ring"
            )

    @property
    def dtype(self) -> type[np.unsignedinteger]:
        return _DTYPES[self.bits][0]

    @property
    def element_bytes(self) -> int:
        return self.bits // 8

    def capacity(self) -> int:
        """The most members whose encoded values sum without wrapping."""
        return capacity(self.bits, self.clip, self.fractional_bits)

    def error_bound(self, members: int) -> float:
        """Largest difference between the decoded sum of ``members`` inputs and their exact sum.

        One rounding per member, plus float64's own rounding of the decoded value (only
        visible in a 64-bit ring, whose integers carry more than float64's 53 bits).
        """
        return members * (2.0 ** -(self.fractional_bits + 1) + self.clip * 2.0**-52)

    def reduce(self, arr: np.ndarray) -> np.ndarray:
        """Ring elements as they travel: the dtype's own wrap-around is this ring, nothing to cut."""
        return arr

    def encode(self, weighted: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """``weighted`` (already multiplied by w_u / W <= 1, entries clipped) as ring elements (``rng`` unused:
        rounding to nearest)."""
        arr = np.asarray(weighted, dtype=np.float64)
        if not np.all(np.isfinite(arr)):
            raise SecAggError("a vector to encode has NaN or Inf entries; refusing to encode it")
        if arr.size and float(np.max(np.abs(arr))) > self.clip:
            raise SecAggError(f"a value exceeds the clip range +-{self.clip}; clip before weighting")
        signed = np.rint(arr * 2.0**self.fractional_bits).astype(np.int64)
        return signed.astype(self.dtype)

    def weighted(self, vectors: list[np.ndarray], weights: list[float], total: float) -> tuple[np.ndarray, int]:
        """Sum of ``clip(x) * w / total`` over one member's slots, and how many entries were clipped."""
        return clipped_weighted(vectors, weights, total, self.clip)

    def decode(self, total: np.ndarray) -> np.ndarray:
        """A ring sum back to floats (two's complement, then divided by 2^f)."""
        arr = np.asarray(total)
        if arr.dtype != self.dtype:
            raise SecAggError(f"ring sum has dtype {arr.dtype}, expected {np.dtype(self.dtype)}")
        return arr.view(_DTYPES[self.bits][1]).astype(np.float64) / 2.0**self.fractional_bits
