"""Clustering on sketches: planted clusters recovered, ids stable across rounds, degenerate inputs."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from fltac_secure.learning.cluster import cluster_sketches


def _planted(k: int, per: int, dim: int = 32, seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, dim)) * 10
    sketches, truth = {}, {}
    order = rng.permutation(k * per)
    for i in order:
        c = int(i % k)
        key = f"site{i:02d}/{c}"
        sketches[key] = centres[c] + rng.standard_normal(dim) * 0.3
        truth[key] = c
    return sketches, truth


def test_recovers_planted_clusters() -> None:
    sk, truth = _planted(4, 6)
    res = cluster_sketches(sk, 4, seed=1)
    keys = list(sk)
    assert adjusted_rand_score([truth[k] for k in keys], [res.labels[k] for k in keys]) == 1.0
    assert sorted(res.sizes.values()) == [6, 6, 6, 6]
    assert set(res.centroids) == {0, 1, 2, 3}


def test_ids_stable_across_rounds_under_permutation() -> None:
    sk, _ = _planted(4, 5, seed=3)
    first = cluster_sketches(sk, 4, seed=0)
    # next round: other key order, other K-means seed, other (rotated) space, one site gone
    rng = np.random.default_rng(9)
    rot, _ = np.linalg.qr(rng.standard_normal((32, 32)))
    keys = list(rng.permutation(list(sk)))[1:]
    moved = {k: sk[k] @ rot for k in keys}
    second = cluster_sketches(moved, 4, seed=123, previous=first)
    for k in keys:
        assert second.labels[k] == first.labels[k]


def test_new_cluster_takes_free_id() -> None:
    prev = cluster_sketches({"a": np.array([0.0, 1.0]), "b": np.array([0.0, 1.1])}, 3, normalize=False)
    assert set(prev.labels.values()) == {0, 1}
    res = cluster_sketches(
        {"a": np.array([0.0, 1.0]), "b": np.array([0.0, 1.1]), "c": np.array([50.0, 0.0])},
        3,
        normalize=False,
        previous=prev,
    )
    assert res.labels["a"] == prev.labels["a"] and res.labels["b"] == prev.labels["b"]
    assert res.labels["c"] == 2


def test_fewer_points_than_k_duplicates_single_and_empty() -> None:
    one = cluster_sketches({"a": np.ones(4)}, 3)
    assert one.labels == {"a": 0}
    dup = cluster_sketches({"a": np.ones(4), "b": np.ones(4), "c": -np.ones(4)}, 5)
    assert dup.labels["a"] == dup.labels["b"] != dup.labels["c"]
    assert len(dup.sizes) == 2
    same = cluster_sketches({"a": np.ones(4), "b": np.ones(4), "c": np.ones(4)}, 2)
    assert set(same.labels.values()) == {0}
    assert cluster_sketches({}, 3).labels == {}


def test_normalisation_groups_by_direction() -> None:
    sk = {"a": np.array([1.0, 0.0]), "b": np.array([100.0, 1.0]), "c": np.array([0.0, 1.0]), "d": np.array([1.0, 90.0])}
    res = cluster_sketches(sk, 2, normalize=True)
    assert res.labels["a"] == res.labels["b"] and res.labels["c"] == res.labels["d"] != res.labels["a"]
    raw = cluster_sketches(sk, 2, normalize=False)
    assert raw.labels["a"] != raw.labels["b"]


def test_refuses_non_finite_and_ragged() -> None:
    with pytest.raises(ValueError, match="non-finite"):
        cluster_sketches({"a": np.array([np.inf, 0.0]), "b": np.zeros(2)}, 2)
    with pytest.raises(ValueError, match="same length"):
        cluster_sketches({"a": np.zeros(2), "b": np.zeros(3)}, 2)
    with pytest.raises(ValueError, match="k must be"):
        cluster_sketches({"a": np.zeros(2)}, 0)


def test_centering_makes_clustering_translation_invariant() -> None:
    sk, truth = _planted(3, 5, dim=16, seed=4)
    offset = np.random.default_rng(1).standard_normal(16) * 1e4
    moved = {k: v + offset for k, v in sk.items()}
    keys = list(sk)
    a = cluster_sketches(sk, 3, center=True, seed=0)
    b = cluster_sketches(moved, 3, center=True, seed=0)
    assert [a.labels[k] for k in keys] == [b.labels[k] for k in keys]
    assert adjusted_rand_score([truth[k] for k in keys], [b.labels[k] for k in keys]) == 1.0
