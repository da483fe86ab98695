"""Aggregation within clusters and redistribution of the cluster means.

Each cluster's global adapter is the mean of its members' vectors, weighted
by each slot's sample count (``samples``, the reference code's choice and the
default) or plain (``uniform``, the paper's formula). Every slot then
receives its cluster's mean. Weighting rules are pluggable
(``register_weighting``).

Following the style guide, the means are computed on copies in float64, the
inputs' shapes and finiteness are checked first and the results' after, and
nothing is returned half-done: a bad input raises before any output exists.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

__all__ = [
    "available_weightings", "cluster_means", "redistribute", "register_weighting", "slot_weights", "weighted_mean",
]

WeightRule = Callable[[np.ndarray], np.ndarray]
_WEIGHTINGS: dict[str, WeightRule] = {}


def register_weighting(name: str, rule: WeightRule) -> None:
    """Add a weighting rule (sample counts -> non-negative weights); duplicates are refused."""
    if name in _WEIGHTINGS:
        raise ValueError(f"a weighting named {name!r} is already registered")
    _WEIGHTINGS[name] = rule


def available_weightings() -> list[str]:
    """Names of the registered weighting rules."""
    return sorted(_WEIGHTINGS)


register_weighting("samples", lambda counts: counts.astype(np.float64))
register_weighting("uniform", lambda counts: np.ones(counts.shape, dtype=np.float64))


def slot_weights(counts: Mapping[str, int], weighting: str = "samples") -> dict[str, float]:
    """Each slot's (unnormalised) weight under ``weighting``: what secure aggregation announces."""
    if weighting not in _WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; choose one of {available_weightings()}")
    keys = list(counts)
    w = _WEIGHTINGS[weighting](np.asarray([int(counts[k]) for k in keys], dtype=np.int64))
    return {k: float(v) for k, v in zip(keys, w, strict=True)}


def weighted_mean(
    vectors: list[np.ndarray],
    counts: list[int],
    weighting: str = "samples",
    *,
    masks: list[np.ndarray] | None = None,
    fill: np.ndarray | None = None,
) -> np.ndarray:
    """The weighted mean of same-shape vectors (float64 accumulation, returned as float32).

    With ``masks`` (one boolean array per vector, the vectors' shape): a per-entry mean, member ``i``
    weighing ``w_i`` on the entries its mask holds and 0 elsewhere (head trimming: a head row is
    averaged over the members whose task uses it).  Entries no member holds take ``fill``'s value.
    Where every mask holds an entry the result is bit for bit the plain mean's.
    """
    if weighting not in _WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; choose one of {available_weightings()}")
    if not vectors:
        raise ValueError("cannot average an empty set of vectors")
    shapes = {np.shape(v) for v in vectors}
    if len(shapes) != 1:
        raise ValueError(f"vectors to average have different shapes {sorted(shapes)}")
    shape = next(iter(shapes))
    c = np.asarray(counts, dtype=np.int64)
    if c.shape != (len(vectors),):
        raise ValueError(f"got {len(vectors)} vectors but {c.size} sample counts")
    if np.any(c < 0):
        raise ValueError(f"sample counts must be >= 0, got {c.tolist()}")
    w = _WEIGHTINGS[weighting](c)
    total = float(w.sum())
    if not total > 0:
        raise ValueError(f"weights sum to {total} (all sample counts zero?); nothing to average")
    if masks is not None:
        return _masked_mean(vectors, w, _checked_masks(masks, len(vectors), shape), fill, shape)
    acc = np.zeros(shape, dtype=np.float64)
    for wi, v in zip(w, vectors, strict=True):
        acc += (wi / total) * _finite64(v)
    if not np.all(np.isfinite(acc)):
        raise ValueError("the weighted mean overflowed to a non-finite value")
    return acc.astype(np.float32)


def _finite64(v: np.ndarray) -> np.ndarray:
    arr = np.asarray(v, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError("a vector to average has NaN or Inf entries; refusing to aggregate it")
    return arr


def _checked_masks(masks: list[np.ndarray], n: int, shape: tuple[int, ...]) -> list[np.ndarray]:
    if len(masks) != n:
        raise ValueError(f"got {n} vectors but {len(masks)} masks")
    out = [np.asarray(m) for m in masks]
    bad = [m.shape for m in out if m.shape != shape or m.dtype != bool]
    if bad:
        raise ValueError(f"masks must be boolean arrays of the vectors' shape {shape}, got {bad[:3]}")
    return out


def _masked_mean(vectors: list[np.ndarray], w: np.ndarray, masks: list[np.ndarray], fill: np.ndarray | None,
                 shape: tuple[int, ...]) -> np.ndarray:
    """Per-entry weighted mean: entry e's weight for member i is ``w_i * mask_i[e]``."""
    totals = np.zeros(shape, dtype=np.float64)
    for wi, m in zip(w, masks, strict=True):
        totals += np.where(m, wi, 0.0)
    empty = ~(totals > 0)
    if empty.any() and (fill is None or np.shape(fill) != shape):
        raise ValueError(f"{int(empty.sum())} entries are held by no member (or only by zero weights); "
                         f"give a fill vector of shape {shape} for them")
    safe = np.where(empty, 1.0, totals)
    acc = np.zeros(shape, dtype=np.float64)
    for wi, m, v in zip(w, masks, vectors, strict=True):
        acc += np.where(m, wi, 0.0) / safe * _finite64(v)
    if empty.any():
        acc[empty] = _finite64(fill)[empty]  # type: ignore[arg-type]
    if not np.all(np.isfinite(acc)):
        raise ValueError("the weighted mean overflowed to a non-finite value")
    return acc.astype(np.float32)


def cluster_means(
    vectors: Mapping[str, np.ndarray],
    labels: Mapping[str, int],
    counts: Mapping[str, int],
    weighting: str = "samples",
    *,
    masks: Mapping[str, np.ndarray] | None = None,
    fill: np.ndarray | None = None,
) -> dict[int, np.ndarray]:
    """Mean vector of every cluster id that has members, keyed by cluster id.

    ``vectors``, ``labels`` and ``counts`` (and ``masks`` if given: a per-entry mean, see
    ``weighted_mean``) are keyed by slot key and must have exactly the same keys (a slot with a
    vector but no assignment, or the reverse, is a protocol bug and raises).
    """
    if set(vectors) != set(labels) or set(vectors) != set(counts) or (masks is not None and set(masks) != set(vectors)):
        extra = set(vectors) ^ set(masks) if masks is not None else set()
        missing = sorted(set(vectors) ^ set(labels) | set(vectors) ^ set(counts) | extra)
        raise ValueError(f"vectors, labels, counts (and masks) must cover the same slots; mismatch on {missing}")
    members: dict[int, list[str]] = {}
    for key in vectors:
        members.setdefault(int(labels[key]), []).append(key)
    return {
        cid: weighted_mean([vectors[k] for k in keys], [int(counts[k]) for k in keys], weighting,
                           masks=None if masks is None else [masks[k] for k in keys], fill=fill)
        for cid, keys in sorted(members.items())
    }


def redistribute(means: Mapping[int, np.ndarray], labels: Mapping[str, int]) -> dict[str, np.ndarray]:
    """Each slot's new vector: a copy of its cluster's mean."""
    missing = sorted({c for c in labels.values() if c not in means})
    if missing:
        raise ValueError(f"no mean for cluster id(s) {missing}; aggregate every assigned cluster first")
    return {key: np.array(means[cid], copy=True) for key, cid in labels.items()}
