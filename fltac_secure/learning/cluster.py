"""K-means on adapter sketches, with cluster ids that stay stable across rounds.

The aggregator sees one sketch per task slot, keyed by an opaque slot key
(e.g. ``"site03/1"``); it never needs task names. K-means (scikit-learn)
groups the sketches into K clusters (K from the plan, default the number of
tasks). K-means numbers its clusters arbitrarily, so each round's clusters
are matched to the previous round's ids with the Hungarian algorithm on
membership overlap (how many slot keys two clusters share), ties broken by
the first member's position: a task keeps its global adapter's id from
round to round, which makes metrics, checkpoints and plots comparable.

A site's slots are different tasks by construction, so two of them in one
cluster is a clustering error. With ``groups`` (slot key -> site, which the
aggregator knows anyway: it is who sent the sketch) the K-means result is
refined under that constraint: each site's slots are matched to distinct
centroids by a Hungarian assignment on squared distances, alternating with
centroid updates until nothing moves (each step lowers the K-means objective
over the assignments that respect the constraint, so it ends). A site with
more slots than clusters cannot be satisfied: its slots are spread as evenly
as possible and the site is listed in ``ClusterResult.crowded``.

Every result carries a *separation score*: the silhouette coefficient
(scikit-learn) of the clustered points under the chosen partition, in
[-1, 1]: near 1 when each slot sits much closer to its own cluster than to
the next, near 0 when the sketches do not separate (a round dominated by DP
noise). With ``settle = s`` a round keeps the previous partition unless its
own partition scores at least ``s`` *and* separates this round's sketches
better than the previous partition does. The threshold matters: on pure
noise K-means still finds a partition that beats any fixed one (it is fitted
to that noise) but scores near 0, so the threshold is what tells structure
from noise. Clusters then move only on evidence: one noisy round cannot
scatter clusters that had settled, and a wrong round-0 partition is left as
soon as a later round separates clearly and better.

With ``kinds`` (slot key -> its task's label count, which the aggregator
knows when sites declare it in JOIN) no cluster mixes two label counts:
averaging a 2-label head with a 5-label one is meaningless whatever the
sketches say, and under DP this constraint holds when the sketches are mostly
noise. Each label count present gets one cluster; the remaining clusters go
one at a time to the label count whose K-means objective drops the most (up
to ``quota``: how many of the plan's tasks have that label count), and within
a label count the sketches decide. A label count held by one task is then
clustered without looking at the sketches at all.

Degenerate inputs are handled, not refused: fewer distinct points than K
gives as many clusters as distinct points (duplicates always share a
cluster), one point gives one cluster, no points gives an empty result.
Non-finite sketches are refused.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import silhouette_score

__all__ = ["ClusterResult", "cluster_sketches", "distinct_assign", "match_ids", "normalize_rows", "separation",
           "site_of"]

MAX_CONSTRAINED_ITER = 50
"""Upper bound on assignment/centroid alternations (each lowers the objective; it stops far earlier)."""


def site_of(key: str) -> str:
    """The site part of a slot key ``"site/index"`` (the whole key if it has no ``/``)."""
    return key.rpartition("/")[0] or key


@dataclass(frozen=True)
class ClusterResult:
    """One round's clustering: ``labels[key]`` is the stable cluster id in ``0 .. k-1``.

    ``centroids[cid]`` is the centroid (in the clustered space) of cluster
    ``cid``; ids that are unused this round are absent. ``crowded``: sites
    with more slots than clusters (the distinct-cluster constraint could not
    hold for them); ``moved``: slots the constraint moved away from their
    unconstrained K-means cluster; ``separation``: the silhouette score of
    the partition on this round's (processed) sketches, None when it is not
    defined (one cluster, or every slot alone); ``kept``: ``settle`` kept the
    previous round's partition. These describe this round only and are not
    checkpointed.
    """

    k: int
    labels: dict[str, int] = field(default_factory=dict)
    centroids: dict[int, np.ndarray] = field(default_factory=dict)
    crowded: tuple[str, ...] = ()
    moved: int = 0
    separation: float | None = None
    kept: bool = False

    @property
    def sizes(self) -> dict[int, int]:
        """Number of slots per used cluster id."""
        out: dict[int, int] = {}
        for cid in self.labels.values():
            out[cid] = out.get(cid, 0) + 1
        return dict(sorted(out.items()))

    def members(self, cid: int) -> list[str]:
        """Slot keys in cluster ``cid``, in insertion order."""
        return [key for key, c in self.labels.items() if c == cid]


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """L2-normalise each row; all-zero rows stay zero (no division by zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def cluster_sketches(
    sketches: Mapping[str, np.ndarray],
    k: int,
    *,
    normalize: bool = True,
    center: bool = False,
    n_init: int = 10,
    seed: int = 0,
    previous: ClusterResult | None = None,
    groups: Mapping[str, str] | None = None,
    settle: float | None = None,
    kinds: Mapping[str, int] | None = None,
    quota: Mapping[int, int] | None = None,
) -> ClusterResult:
    """Cluster the sketches into at most ``k`` clusters with ids matched to ``previous``.

    ``sketches`` maps slot key -> 1-D sketch (all the same length).
    ``center`` subtracts the mean sketch first (sketches are linear, so this
    is the sketch of the centred vectors): the common starting adapter and
    drift shared by all tasks cancel, which makes ``full`` features as
    informative as deltas in round 0 and keeps them stable later. The
    K-means run is seeded by ``seed`` (the caller derives it from the plan
    and the round) so every replay of a round gives the same clusters.
    ``groups`` (slot key -> site) turns on the distinct-cluster constraint
    per site (see the module doc); keys missing from it form their own group.
    ``settle`` (a separation threshold; None: off) keeps ``previous``'s
    partition (when it covers every key) unless this round's partition
    scores at least ``settle`` and higher than ``previous``'s on ``x``.
    ``kinds`` (slot key -> its task's label count) keeps slots of different
    label counts in different clusters; ``quota`` (label count -> how many
    tasks have it) caps the clusters one label count gets (see the module doc).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    keys = list(sketches)
    if not keys:
        return ClusterResult(k=k)
    x = _stack(keys, sketches)
    if center and x.shape[0] > 1:
        x = x - x.mean(axis=0, keepdims=True)
    if normalize:
        x = normalize_rows(x)
    names = [groups.get(key, key) for key in keys] if groups is not None else None
    if kinds is None:
        raw, crowded, moved = _partition(x, k, names, n_init=n_init, seed=seed)
    else:
        missing = [key for key in keys if key not in kinds]
        if missing:
            raise ValueError(f"no label count for slot(s) {missing}; every slot needs one to cluster by label count")
        raw, crowded, moved = _partition_by_kind(x, k, [int(kinds[key]) for key in keys], names, quota,
                                                 n_init=n_init, seed=seed)
    score = separation(x, raw)
    if settle is not None and previous is not None and all(key in previous.labels for key in keys):
        before = np.asarray([previous.labels[key] for key in keys], dtype=np.int64)
        kept_score = separation(x, before)
        clear = score is not None and score >= settle and (kept_score is None or score > kept_score)
        if not clear:
            labels = {key: int(c) for key, c in zip(keys, before, strict=True)}
            centroids = {int(c): x[before == c].mean(axis=0) for c in np.unique(before)}
            return ClusterResult(k=k, labels=labels, centroids=dict(sorted(centroids.items())), crowded=crowded,
                                 moved=moved, separation=kept_score, kept=True)
    ids = match_ids(keys, raw, k, previous)
    labels = {key: ids[int(r)] for key, r in zip(keys, raw, strict=True)}
    centroids = {ids[int(r)]: x[raw == r].mean(axis=0) for r in np.unique(raw)}
    return ClusterResult(k=k, labels=labels, centroids=dict(sorted(centroids.items())), crowded=crowded, moved=moved,
                         separation=score)


def separation(x: np.ndarray, labels: np.ndarray) -> float | None:
    """Silhouette score of ``labels`` on the rows of ``x`` (Euclidean), or None with fewer than 2 clusters or
    no cluster of two or more rows (the score is not defined there)."""
    lab = np.asarray(labels)
    used, sizes = np.unique(lab, return_counts=True)
    if used.size < 2 or used.size >= x.shape[0]:
        return None
    return float(silhouette_score(x, lab, metric="euclidean"))


def distinct_assign(
    x: np.ndarray, labels: np.ndarray, groups: Sequence[str], k: int
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Refine ``labels`` (in ``0 .. k-1``) so that rows of one group sit in distinct clusters.

    Alternates (a) per group, a minimum-cost matching of its rows to distinct
    centroids (squared Euclidean distance; a group with more rows than ``k``
    gets each centroid at most ``ceil(rows / k)`` times) and (b) centroid
    updates (an emptied cluster keeps its centroid), until the labels stop
    changing. Deterministic: no randomness, ties broken by row and column
    order. Returns the new labels and the groups with more rows than ``k``.
    """
    labels = np.asarray(labels, dtype=np.int64).copy()
    if x.shape[0] == 0 or k < 1:
        return labels, ()
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    crowded = tuple(sorted(g for g, rows in members.items() if len(rows) > k))
    if k == 1:
        return np.zeros_like(labels), crowded
    multi = [rows for rows in members.values() if len(rows) > 1]
    centroids = np.stack([x[labels == c].mean(axis=0) if np.any(labels == c) else x[c % x.shape[0]]
                          for c in range(k)])
    for _ in range(MAX_CONSTRAINED_ITER):
        new = labels.copy()
        d2 = ((x[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)
        for rows in multi:
            reps = -(-len(rows) // k)  # ceil: how often each centroid may be used by this group
            cost = np.tile(d2[rows], (1, reps))
            r_idx, c_idx = linear_sum_assignment(cost)
            new[np.asarray(rows)[r_idx]] = c_idx % k
        for i in (i for rows in members.values() if len(rows) == 1 for i in rows):
            new[i] = int(np.argmin(d2[i]))
        if np.array_equal(new, labels):
            break
        labels = new
        for c in range(k):
            if np.any(labels == c):
                centroids[c] = x[labels == c].mean(axis=0)
    return labels, crowded


def _partition(x: np.ndarray, k: int, names: Sequence[str] | None, *, n_init: int, seed: int,
               ) -> tuple[np.ndarray, tuple[str, ...], int]:  # fmt: skip
    """K-means labels (``0 .. m-1``), refined so a group's rows sit in distinct clusters when ``names`` is given;
    also the crowded groups and how many rows the refinement moved."""
    raw = _kmeans_labels(x, k, n_init=n_init, seed=seed)
    if names is None:
        return raw, (), 0
    refined, crowded = distinct_assign(x, raw, names, min(k, x.shape[0]))
    return _compact(refined), crowded, int(np.sum(refined != raw))


def _inertia(x: np.ndarray, labels: np.ndarray) -> float:
    """Sum of squared distances of the rows of ``x`` to their cluster's mean."""
    return float(sum(((x[labels == c] - x[labels == c].mean(axis=0)) ** 2).sum() for c in np.unique(labels)))


def _partition_by_kind(x: np.ndarray, k: int, kinds: Sequence[int], names: Sequence[str] | None,
                       quota: Mapping[int, int] | None, *, n_init: int, seed: int,
                       ) -> tuple[np.ndarray, tuple[str, ...], int]:  # fmt: skip
    """``_partition`` with no cluster mixing two kinds: each kind present gets one cluster, and the other
    ``k - kinds`` clusters go one at a time to the kind whose K-means objective drops the most, first up to
    its ``quota`` (how many tasks have that label count), then, if clusters are left, beyond it."""
    kind_arr = np.asarray(kinds)
    present = sorted(set(kind_arr.tolist()))
    if len(present) > k:
        raise ValueError(f"the slots have {len(present)} different label counts {present} but there are only "
                         f"{k} clusters; raise clustering.k to at least {len(present)}")
    rows = {g: np.flatnonzero(kind_arr == g) for g in present}

    trials: dict[tuple[int, int], tuple[tuple[np.ndarray, tuple[str, ...], int], float]] = {}

    def part(g: int, kg: int) -> tuple[tuple[np.ndarray, tuple[str, ...], int], float]:
        """Kind ``g``'s rows in ``kg`` clusters and that partition's inertia, computed once per (g, kg)."""
        if (g, kg) not in trials:
            sub = [names[i] for i in rows[g]] if names is not None else None
            found = _partition(x[rows[g]], kg, sub, n_init=n_init, seed=seed)
            trials[g, kg] = found, _inertia(x[rows[g]], found[0])
        return trials[g, kg]

    alloc = dict.fromkeys(present, 1)
    distinct = {g: np.unique(x[rows[g]], axis=0).shape[0] for g in present}
    for capped in (True, False):
        while sum(alloc.values()) < k:
            best: tuple[float, int] | None = None
            for g in present:
                cap = (quota or {}).get(g, alloc[g] + 1) if capped else distinct[g]
                if alloc[g] >= min(cap, distinct[g]):
                    continue
                gain = part(g, alloc[g])[1] - part(g, alloc[g] + 1)[1]
                if best is None or gain > best[0]:
                    best = (gain, g)
            if best is None:
                break
            alloc[best[1]] += 1
    parts = {g: part(g, alloc[g])[0] for g in present}
    labels = np.zeros(x.shape[0], dtype=np.int64)
    offset, crowded, moved = 0, [], 0
    for g in present:
        lab, crowd, mv = parts[g]
        labels[rows[g]] = lab + offset
        offset += int(lab.max()) + 1
        crowded += crowd
        moved += mv
    return _compact(labels), tuple(sorted(set(crowded))), moved


def _compact(labels: np.ndarray) -> np.ndarray:
    """Renumber labels to ``0 .. m-1`` in order of value (empty clusters dropped)."""
    _, inverse = np.unique(labels, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64)


def _stack(keys: Sequence[str], sketches: Mapping[str, np.ndarray]) -> np.ndarray:
    rows = [np.asarray(sketches[key], dtype=np.float64) for key in keys]
    dims = {r.shape for r in rows}
    if len(dims) != 1 or rows[0].ndim != 1:
        raise ValueError(f"sketches must be 1-D and all the same length, got shapes {sorted(dims)}")
    x = np.stack(rows)
    if not np.all(np.isfinite(x)):
        bad = [key for key, r in zip(keys, rows, strict=True) if not np.all(np.isfinite(r))]
        raise ValueError(f"non-finite sketch values from slot(s) {bad}; refusing to cluster them")
    return x


def _kmeans_labels(x: np.ndarray, k: int, *, n_init: int, seed: int) -> np.ndarray:
    """Raw K-means labels; K is capped at the number of distinct points."""
    distinct, inverse = np.unique(x, axis=0, return_inverse=True)
    k_eff = min(k, distinct.shape[0])
    if k_eff == 1:
        return np.zeros(x.shape[0], dtype=np.int64)
    if k_eff == distinct.shape[0]:
        return inverse.reshape(-1).astype(np.int64)
    km = KMeans(n_clusters=k_eff, n_init=n_init, random_state=seed % (2**32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return km.fit_predict(x).astype(np.int64)


def match_ids(
    keys: Sequence[str], raw: np.ndarray, k: int, previous: ClusterResult | None
) -> dict[int, int]:
    """Map raw K-means labels to stable ids in ``0 .. k-1``.

    With a previous round: Hungarian assignment maximising the number of slot
    keys a new cluster shares with a previous id (ties: the order in which
    clusters first appear). New clusters that overlap nothing take the
    smallest free ids. Without one: ids in order of first appearance, so the
    numbering is deterministic for a given key order.

    Centroid distance is deliberately not used: each round has its own
    projection (and, with ``features='delta'``, its own reference point), so
    centroids of different rounds live in different spaces; shared members
    are the only signal that is comparable across rounds.
    """
    order = list(dict.fromkeys(int(r) for r in raw))  # raw labels by first appearance
    mapping: dict[int, int] = {}
    if previous is not None and previous.labels:
        overlap = np.zeros((len(order), k))
        pos = {r: i for i, r in enumerate(order)}
        for key, r in zip(keys, raw, strict=True):
            cid = previous.labels.get(key)
            if cid is not None and cid < k:
                overlap[pos[int(r)], cid] += 1
        # tie-breaker worth < 1 shared key in total: on equal overlap keep first-appearance order
        idx = np.arange(max(len(order), k))
        tie = np.abs(np.subtract.outer(idx[: len(order)], idx[:k])) / (10.0 * k * max(len(order), k))
        rows, cols = linear_sum_assignment(-(overlap - tie))
        for i, j in zip(rows, cols, strict=True):
            if overlap[i, j] > 0:
                mapping[order[i]] = int(j)
    free = [cid for cid in range(k) if cid not in mapping.values()]
    for r in order:
        if r not in mapping:
            mapping[r] = free.pop(0)
    return mapping
