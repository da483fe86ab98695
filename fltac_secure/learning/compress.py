"""Unbiased stochastic quantisation of update vectors, packed to bytes (QSGD-style, per-block scales).

An update ``x`` (float32, length ``n``) is cut into blocks of ``block_size``
numbers.  Each block has a scale ``s = max |x|`` (float32) and its values are
mapped to the integer grid ``[-L, L]`` with ``L = 2^(bits-1) - 1``:
``y = x / s * L`` is rounded down or up at random, up with probability
``y - floor(y)``, so ``E[v] = y`` and the dequantised ``v * s / L`` equals ``x``
in expectation (Alistarh et al. 2017, QSGD; Reisizadeh et al. 2020, FedPAQ).
The variance per entry is at most ``(s / L)^2 / 4``.

Wire layout (what ``Quantised`` holds and ``from_wire`` checks):

- ``packed``: uint8, ``ceil(n * bits / 8)`` bytes.  Each value travels as the
  unsigned offset ``u = v + L`` in ``[0, 2L]`` (``2^bits - 1`` is never used, so
  it is refused); 16-bit values as little-endian uint16, 8-bit as one byte,
  4-bit two per byte and 2-bit four per byte, the first value in the low
  bits.  Padding bits of the last byte are zero.
- ``scales``: float32, one per block (``ceil(n / block_size)``), finite, >= 0.

``bits = 32`` means "off": no quantisation anywhere (callers skip this module).
Randomness comes from the operating system (``secrets``) unless a test passes
``rng``: the rounding noise must not be predictable from the plan, which every
site and the aggregator share.

Error feedback (Seide et al. 2014; Karimireddy et al. 2019): the caller keeps a
residual ``e`` per slot, quantises ``u + e`` and keeps ``u + e - dequant(q)``.
Pure: arrays in, arrays out, no I/O.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass

import numpy as np

from fltac_secure.errors import CompressionError

__all__ = ["BITS", "OFF", "Quantised", "dequantise", "error_feedback", "from_wire", "levels", "n_blocks",
           "packed_nbytes", "quantise", "stochastic_round", "wire_nbytes"]

OFF = 32
BITS = (2, 4, 8, 16)
SCALE_BYTES = 4
MIN_BLOCK = 8


def levels(bits: int) -> int:
    """``L``: the grid is the integers in ``[-L, L]``."""
    _check_bits(bits)
    return (1 << (bits - 1)) - 1


def _check_bits(bits: int) -> None:
    if bits not in BITS:
        raise CompressionError(f"compression.bits = {bits} cannot be packed; use one of {list(BITS)} (32: off)")


def n_blocks(n: int, block_size: int) -> int:
    """How many per-block scales a vector of ``n`` numbers has."""
    if block_size < MIN_BLOCK:
        raise CompressionError(f"compression.block_size = {block_size} is below {MIN_BLOCK}")
    return -(-n // block_size)


def packed_nbytes(n: int, bits: int) -> int:
    """Bytes of ``n`` packed values: ``ceil(n * bits / 8)``."""
    _check_bits(bits)
    return -(-n * bits // 8)


def wire_nbytes(n: int, bits: int, block_size: int) -> int:
    """Data bytes one quantised vector costs on the wire: packed values plus 4 bytes per block scale."""
    return packed_nbytes(n, bits) + SCALE_BYTES * n_blocks(n, block_size)


@dataclass(frozen=True)
class Quantised:
    """One quantised vector: ``n`` values at ``bits`` each, packed, and one float32 scale per block."""

    n: int
    bits: int
    block_size: int
    packed: np.ndarray  # uint8, packed_nbytes(n, bits)
    scales: np.ndarray  # float32, n_blocks(n, block_size)

    @property
    def nbytes(self) -> int:
        return int(self.packed.nbytes + self.scales.nbytes)


def _os_rng() -> np.random.Generator:
    return np.random.default_rng(secrets.randbits(128))


def _block_scales(x: np.ndarray, block_size: int) -> np.ndarray:
    nb = n_blocks(x.size, block_size)
    padded = np.zeros(nb * block_size, dtype=np.float32)
    padded[: x.size] = np.abs(x)
    return padded.reshape(nb, block_size).max(axis=1) if nb else np.zeros(0, np.float32)


def quantise(x: np.ndarray, bits: int, block_size: int, *, rng: np.random.Generator | None = None) -> Quantised:
    """Stochastically round ``x`` (finite, 1-D) to ``bits`` per value with per-block scales; unbiased.

    ``rng`` is for tests only; by default every call draws a fresh generator seeded from the OS.
    """
    big = levels(bits)
    arr = np.asarray(x)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.floating):
        raise CompressionError(f"quantise needs a 1-D float vector, got shape {arr.shape} dtype {arr.dtype}")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise CompressionError(f"update has {int((~np.isfinite(arr)).sum())} NaN/Inf entries; refusing to quantise it")
    scales = _block_scales(arr, block_size)
    per = np.repeat(scales.astype(np.float64), block_size)[: arr.size]
    safe = np.where(per > 0, per, 1.0)
    v = stochastic_round(np.clip(arr.astype(np.float64) / safe * big, -big, big), rng)
    unsigned = (v + big).astype(np.uint32)
    return Quantised(arr.size, bits, block_size, _pack(unsigned, bits), scales.astype(np.float32))


def stochastic_round(y: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """``floor(y)`` or ``floor(y) + 1`` (int64), up with probability ``y - floor(y)``: ``E = y``.

    ``rng`` is for tests only; by default a fresh generator seeded from the OS.
    """
    low = np.floor(y)
    gen = rng if rng is not None else _os_rng()
    return (low + (gen.random(np.shape(y)) < (y - low))).astype(np.int64)


def dequantise(q: Quantised) -> np.ndarray:
    """The float32 vector ``q`` stands for: ``v * s / L`` per value (``q`` checked as from the wire)."""
    _validate(q)
    big = levels(q.bits)
    v = _unpack(q.packed, q.n, q.bits).astype(np.int64) - big
    per = np.repeat(q.scales.astype(np.float64), q.block_size)[: q.n]
    return (v.astype(np.float64) * (per / big)).astype(np.float32)


def error_feedback(update: np.ndarray, residual: np.ndarray | None, bits: int, block_size: int, *,
                   rng: np.random.Generator | None = None) -> tuple[Quantised, np.ndarray]:
    """Quantise ``update + residual``; return it and the new residual ``update + residual - dequant(q)``.

    ``residual`` None (a slot's first round) counts as zeros.  The residual is float32, the update's length.
    """
    u = np.asarray(update, dtype=np.float32)
    if residual is not None and np.asarray(residual).shape != u.shape:
        raise CompressionError(f"error-feedback residual has shape {np.asarray(residual).shape}, the update "
                               f"{u.shape}; it belongs to another plan or slot")
    target = u if residual is None else (u + np.asarray(residual, dtype=np.float32)).astype(np.float32)
    q = quantise(target, bits, block_size, rng=rng)
    return q, (target - dequantise(q)).astype(np.float32)


def from_wire(packed: np.ndarray, scales: np.ndarray, n: int, bits: int, block_size: int) -> Quantised:
    """A ``Quantised`` from untrusted arrays, checked against the sizes the plan implies (never the peer's)."""
    q = Quantised(n, bits, block_size, np.ascontiguousarray(packed), np.ascontiguousarray(scales))
    _validate(q)
    return q


def _validate(q: Quantised) -> None:
    """Lengths and dtypes as the plan implies, finite scales >= 0, every value on the grid, zero padding."""
    _check_bits(q.bits)
    want_p, want_s = packed_nbytes(q.n, q.bits), n_blocks(q.n, q.block_size)
    p, s = q.packed, q.scales
    if p.dtype != np.uint8 or p.shape != (want_p,):
        raise CompressionError(f"packed values are {p.dtype} {p.shape}, expected uint8 ({want_p},) for {q.n} "
                               f"values at {q.bits} bits")
    if s.dtype != np.float32 or s.shape != (want_s,):
        raise CompressionError(f"scales are {s.dtype} {s.shape}, expected float32 ({want_s},) for {q.n} values in "
                               f"blocks of {q.block_size}")
    if not np.isfinite(s).all() or (s < 0).any():
        raise CompressionError("scales hold NaN, Inf or negative numbers; a scale is a finite max |x| >= 0")
    u = _unpack(p, q.n, q.bits)
    if u.size and int(u.max()) > 2 * levels(q.bits):
        raise CompressionError(f"a packed value is {int(u.max())}, outside the {q.bits}-bit grid "
                               f"[0, {2 * levels(q.bits)}]")
    tail = q.n * q.bits % 8
    if tail and int(p[-1]) >> tail:
        raise CompressionError("the padding bits of the last packed byte are not zero")


def _pack(unsigned: np.ndarray, bits: int) -> np.ndarray:
    if bits == 16:
        return unsigned.astype("<u2").view(np.uint8).copy()
    if bits == 8:
        return unsigned.astype(np.uint8)
    per = 8 // bits
    padded = np.zeros(math.ceil(unsigned.size / per) * per, dtype=np.uint8)
    padded[: unsigned.size] = unsigned
    lanes = padded.reshape(-1, per)
    out = np.zeros(lanes.shape[0], dtype=np.uint8)
    for j in range(per):
        out |= (lanes[:, j] << np.uint8(j * bits)).astype(np.uint8)
    return out


def _unpack(packed: np.ndarray, n: int, bits: int) -> np.ndarray:
    if bits == 16:
        return packed.view("<u2")[:n].astype(np.uint32)
    if bits == 8:
        return packed[:n].astype(np.uint32)
    per, mask = 8 // bits, (1 << bits) - 1
    lanes = np.stack([(packed >> np.uint8(j * bits)) & np.uint8(mask) for j in range(per)], axis=1)
    return lanes.reshape(-1)[:n].astype(np.uint32)
