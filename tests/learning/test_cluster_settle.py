"""Separation score per round and ``clustering.settle``: clusters move only when a round separates better."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import adjusted_rand_score

from fltac_secure.learning.cluster import ClusterResult, cluster_sketches, separation


def _planted(k: int, per: int, *, spread: float, dim: int = 32, seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, dim)) * 10
    sketches, truth = {}, {}
    for i in range(k * per):
        c = i % k
        key = f"site{i:02d}/0"
        sketches[key] = centres[c] + rng.standard_normal(dim) * spread
        truth[key] = c
    return sketches, truth


def _ari(truth: dict[str, int], res: ClusterResult) -> float:
    keys = list(truth)
    return float(adjusted_rand_score([truth[k] for k in keys], [res.labels[k] for k in keys]))


def test_separation_is_high_for_planted_clusters_and_low_for_noise() -> None:
    sk, truth = _planted(3, 8, spread=0.3)
    good = cluster_sketches(sk, 3, seed=0)
    assert good.separation is not None and good.separation > 0.8
    noise = {k: np.random.default_rng(i).standard_normal(32) for i, k in enumerate(sk)}
    bad = cluster_sketches(noise, 3, seed=0)
    assert bad.separation is not None and bad.separation < 0.3


def test_separation_undefined_for_one_cluster_or_singletons() -> None:
    x = np.random.default_rng(0).standard_normal((4, 5))
    assert separation(x, np.zeros(4, dtype=np.int64)) is None
    assert separation(x, np.arange(4)) is None
    assert separation(x, np.array([0, 0, 1, 1])) is not None


def test_settle_keeps_settled_clusters_through_a_round_of_noise() -> None:
    sk, truth = _planted(3, 8, spread=0.3)
    first = cluster_sketches(sk, 3, seed=0)
    assert _ari(truth, first) == 1.0
    noise = {k: np.random.default_rng(100 + i).standard_normal(32) for i, k in enumerate(sk)}
    scattered = cluster_sketches(noise, 3, seed=1, previous=first)
    assert _ari(truth, scattered) < 0.5  # without settle a noisy round scatters the clusters
    kept = cluster_sketches(noise, 3, seed=1, previous=first, settle=0.2)
    assert kept.kept and kept.labels == first.labels
    assert kept.separation == separation(_rows(noise), np.asarray([first.labels[k] for k in noise]))


def _rows(sk: dict[str, np.ndarray]) -> np.ndarray:
    """The rows as cluster_sketches scores them by default (normalised, not centred)."""
    x = np.stack(list(sk.values()))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_settle_leaves_a_wrong_partition_when_a_round_separates_better() -> None:
    sk, truth = _planted(3, 8, spread=0.3, seed=4)
    keys = list(sk)
    wrong = ClusterResult(k=3, labels={k: (i // 3) % 3 for i, k in enumerate(keys)})
    assert _ari(truth, wrong) < 0.5
    res = cluster_sketches(sk, 3, seed=0, previous=wrong, settle=0.2)
    assert not res.kept and _ari(truth, res) == 1.0


def test_settle_ignores_a_previous_round_that_misses_slots() -> None:
    sk, truth = _planted(3, 6, spread=0.3)
    first = cluster_sketches(sk, 3, seed=0)
    extra = dict(sk)
    extra["site99/0"] = sk[next(iter(sk))] + 0.01
    res = cluster_sketches(extra, 3, seed=0, previous=first, settle=0.2)
    assert not res.kept and set(res.labels) == set(extra)


def test_settle_threshold_is_what_refuses_a_noise_partition() -> None:
    """On noise K-means beats the kept partition's score, so only the threshold keeps the clusters."""
    sk, truth = _planted(3, 8, spread=0.3)
    first = cluster_sketches(sk, 3, seed=0)
    noise = {k: np.random.default_rng(100 + i).standard_normal(32) for i, k in enumerate(sk)}
    fresh = cluster_sketches(noise, 3, seed=1)
    kept_score = separation(_rows(noise), np.asarray([first.labels[k] for k in noise]))
    assert fresh.separation is not None and kept_score is not None and fresh.separation > kept_score
    moved = cluster_sketches(noise, 3, seed=1, previous=first, settle=0.0)
    assert not moved.kept and _ari({k: fresh.labels[k] for k in noise}, moved) == 1.0
    assert cluster_sketches(noise, 3, seed=1, previous=first, settle=0.5).labels == first.labels
