"""Random-projection sketches of adapter vectors (Johnson-Lindenstrauss).

The aggregator clusters adapters on short sketches instead of the full
vectors: K-means on ``sketch_dim`` numbers per slot is cheap whatever the
adapter size, and the sketch is all a site must send before the assignment.

A sketch is ``x @ R`` with ``R`` a ``(len(x), sketch_dim)`` random matrix
whose entries have mean 0 and variance ``1 / sketch_dim``, so
``E ||x @ R||^2 = ||x||^2`` and pairwise distances are preserved within the
JL error (relative error ~ ``sqrt(2 / sketch_dim)`` per pair, one std).

``R`` is never built whole. It is defined block by block: block ``b`` holds
rows ``b * BLOCK_ROWS ... (b + 1) * BLOCK_ROWS - 1`` and is generated from
``(seed, b)`` alone, so memory stays O(BLOCK_ROWS x sketch_dim) for vectors
of any length, the result does not depend on how the caller splits the
vector into parts, and every site derives the same ``R`` from the round's
seed. ``BLOCK_ROWS`` is part of the definition: changing it changes every
sketch.

Sketchers are pluggable (``register_sketcher``); the default ``rademacher``
(Achlioptas' dense +-1 projection) is built from raw bit-generator output,
which numpy keeps stable across versions, so sites with different numpy
releases still agree bit for bit.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import ClassVar

import numpy as np

BLOCK_ROWS = 8192
DEFAULT_SKETCHER = "rademacher"

__all__ = [
    "BLOCK_ROWS",
    "DEFAULT_SKETCHER",
    "GaussianSketcher",
    "RademacherSketcher",
    "Sketcher",
    "available_sketchers",
    "make_sketcher",
    "register_sketcher",
    "round_sketch_seed",
]


def round_sketch_seed(base_seed: int, round_index: int) -> int:
    """The projection seed of one round: a 63-bit hash of (base seed, round).

    Hash-derived (not ``base_seed + round``) so that rounds of different
    federations with nearby seeds never share a projection.
    """
    if base_seed < 0 or round_index < 0:
        raise ValueError(f"seed and round must be >= 0, got seed={base_seed}, round={round_index}")
    digest = hashlib.sha256(f"fltac-sketch|{base_seed}|{round_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class Sketcher(ABC):
    """A seeded linear projection to ``dim`` numbers, defined block by block.

    Subclasses implement ``_block`` (one block of rows of ``R``, already
    scaled); the base class streams vectors through it.
    """

    name: ClassVar[str] = ""

    def __init__(self, dim: int, seed: int) -> None:
        if dim < 1:
            raise ValueError(f"sketch dim must be >= 1, got {dim}")
        if seed < 0:
            raise ValueError(f"sketch seed must be >= 0, got {seed}")
        self.dim = int(dim)
        self.seed = int(seed)

    @abstractmethod
    def _block(self, index: int) -> np.ndarray:
        """Rows ``index * BLOCK_ROWS ...`` of R: float32, shape (BLOCK_ROWS, dim)."""

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, index])))

    def sketch(self, vectors: np.ndarray) -> np.ndarray:
        """Sketch one vector ``(D,)`` or a batch ``(n, D)``; returns ``(dim,)`` or ``(n, dim)`` float64."""
        arr = np.asarray(vectors)
        if arr.ndim not in (1, 2):
            raise ValueError(f"sketch expects a vector or a 2-D batch, got shape {arr.shape}")
        single = arr.ndim == 1
        batch = arr[None, :] if single else arr
        out = self.sketch_parts([batch])
        return out[0] if single else out

    def sketch_parts(self, parts: Iterable[np.ndarray]) -> np.ndarray:
        """Sketch a batch given as consecutive column pieces ``(n, d_i)`` (or 1-D pieces).

        The result equals ``sketch(concatenate(parts, axis=-1))`` (up to float
        rounding order) without ever concatenating: a model's tensors can be
        fed one by one.
        """
        acc: np.ndarray | None = None
        offset = 0
        for part in parts:
            piece = np.asarray(part)
            piece = piece[None, :] if piece.ndim == 1 else piece
            if piece.ndim != 2:
                raise ValueError(f"sketch parts must be 1-D or 2-D, got shape {piece.shape}")
            if acc is None:
                acc = np.zeros((piece.shape[0], self.dim), dtype=np.float64)
            elif piece.shape[0] != acc.shape[0]:
                raise ValueError(f"sketch parts disagree on batch size: {piece.shape[0]} vs {acc.shape[0]}")
            if not np.all(np.isfinite(piece)):
                raise ValueError("cannot sketch a vector with NaN or Inf entries")
            self._accumulate(acc, piece, offset)
            offset += piece.shape[1]
        if acc is None:
            raise ValueError("nothing to sketch: no parts given")
        return acc

    def _accumulate(self, acc: np.ndarray, piece: np.ndarray, offset: int) -> None:
        """Add ``piece @ R[offset : offset + width]`` to ``acc``, one block at a time."""
        width = piece.shape[1]
        pos = 0
        while pos < width:
            row = offset + pos
            block, start = divmod(row, BLOCK_ROWS)
            take = min(BLOCK_ROWS - start, width - pos)
            rows = self._block(block)[start : start + take]
            acc += piece[:, pos : pos + take].astype(np.float32, copy=False) @ rows
            pos += take

    def matrix(self, length: int) -> np.ndarray:
        """The explicit ``(length, dim)`` projection (tests and small vectors only)."""
        nblocks = -(-length // BLOCK_ROWS)
        return np.concatenate([self._block(b) for b in range(nblocks)], axis=0)[:length]


class RademacherSketcher(Sketcher):
    """Dense +-1/sqrt(dim) entries (Achlioptas 2003), from raw PCG64 bits (numpy-version stable)."""

    name = "rademacher"

    def _block(self, index: int) -> np.ndarray:
        nbits = BLOCK_ROWS * self.dim
        words = self._rng(index).bit_generator.random_raw(-(-nbits // 64)).astype("<u8")
        bits = np.unpackbits(words.view(np.uint8), bitorder="little")[:nbits]
        scale = np.float32(1.0 / np.sqrt(self.dim))
        signs = bits.astype(np.float32) * (2 * scale) - scale
        return signs.reshape(BLOCK_ROWS, self.dim)


class GaussianSketcher(Sketcher):
    """N(0, 1/dim) entries (the classic JL projection); stable within one numpy release."""

    name = "gaussian"

    def _block(self, index: int) -> np.ndarray:
        g = self._rng(index).standard_normal((BLOCK_ROWS, self.dim), dtype=np.float32)
        return g * np.float32(1.0 / np.sqrt(self.dim))


_REGISTRY: dict[str, type[Sketcher]] = {}


def register_sketcher(cls: type[Sketcher]) -> type[Sketcher]:
    """Add a sketcher class under ``cls.name``; a duplicate name is refused."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name; set the class attribute `name`")
    if cls.name in _REGISTRY:
        raise ValueError(f"a sketcher named {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls
    return cls


def available_sketchers() -> list[str]:
    """Names of the registered sketchers."""
    return sorted(_REGISTRY)


def make_sketcher(dim: int, seed: int, kind: str = DEFAULT_SKETCHER) -> Sketcher:
    """A sketcher of the registered ``kind``; an unknown kind names the known ones."""
    try:
        cls = _REGISTRY[kind]
    except KeyError:
        raise ValueError(f"unknown sketcher {kind!r}; choose one of {available_sketchers()}") from None
    return cls(dim, seed)


register_sketcher(RademacherSketcher)
register_sketcher(GaussianSketcher)
