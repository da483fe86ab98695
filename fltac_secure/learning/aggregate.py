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


def weighted_mean(vectors: list[np.ndarray], counts: list[int], weighting: str = "samples") -> np.ndarray:
    """The weighted mean of same-shape vectors (float64 accumulation, returned as float32)."""
    if weighting not in _WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; choose one of {available_weightings()}")
    if not vectors:
        raise ValueError("cannot average an empty set of vectors")
    shapes = {np.shape(v) for v in vectors}
    if len(shapes) != 1:
        raise ValueError(f"vectors to average have different shapes {sorted(shapes)}")
    c = np.asarray(counts, dtype=np.int64)
    if c.shape != (len(vectors),):
        raise ValueError(f"got {len(vectors)} vectors but {c.size} sample counts")
    if np.any(c < 0):
        raise ValueError(f"sample counts must be >= 0, got {c.tolist()}")
    w = _WEIGHTINGS[weighting](c)
    total = float(w.sum())
    if not total > 0:
        raise ValueError(f"weights sum to {total} (all sample counts zero?); nothing to average")
    acc = np.zeros(next(iter(shapes)), dtype=np.float64)
    for wi, v in zip(w, vectors, strict=True):
        arr = np.asarray(v, dtype=np.float64)
        if not np.all(np.isfinite(arr)):
            raise ValueError("a vector to average has NaN or Inf entries; refusing to aggregate it")
        acc += (wi / total) * arr
    if not np.all(np.isfinite(acc)):
        raise ValueError("the weighted mean overflowed to a non-finite value")
    return acc.astype(np.float32)


def cluster_means(
    vectors: Mapping[str, np.ndarray],
    labels: Mapping[str, int],
    counts: Mapping[str, int],
    weighting: str = "samples",
) -> dict[int, np.ndarray]:
    """Mean vector of every cluster id that has members, keyed by cluster id.

    ``vectors``, ``labels`` and ``counts`` are keyed by slot key and must have
    exactly the same keys (a slot with a vector but no assignment, or the
    reverse, is a protocol bug and raises).
    """
    if set(vectors) != set(labels) or set(vectors) != set(counts):
        missing = sorted(set(vectors) ^ set(labels) | set(vectors) ^ set(counts))
        raise ValueError(f"vectors, labels and counts must cover the same slots; mismatch on {missing}")
    members: dict[int, list[str]] = {}
    for key in vectors:
        members.setdefault(int(labels[key]), []).append(key)
    return {
        cid: weighted_mean([vectors[k] for k in keys], [int(counts[k]) for k in keys], weighting)
        for cid, keys in sorted(members.items())
    }


def redistribute(means: Mapping[int, np.ndarray], labels: Mapping[str, int]) -> dict[str, np.ndarray]:
    """Each slot's new vector: a copy of its cluster's mean."""
    missing = sorted({c for c in labels.values() if c not in means})
    if missing:
        raise ValueError(f"no mean for cluster id(s) {missing}; aggregate every assigned cluster first")
    return {key: np.array(means[cid], copy=True) for key, cid in labels.items()}
