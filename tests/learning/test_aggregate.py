"""Cluster means: exact on hand-made examples, weighted and uniform; refuses bad input."""

from __future__ import annotations

import numpy as np
import pytest

from fltac_secure.learning.aggregate import cluster_means, redistribute, weighted_mean


def test_weighted_and_uniform_exact() -> None:
    vecs = {"a/0": np.array([1.0, 0.0]), "b/0": np.array([4.0, 3.0]), "c/0": np.array([10.0, 10.0])}
    labels = {"a/0": 0, "b/0": 0, "c/0": 1}
    counts = {"a/0": 1, "b/0": 3, "c/0": 7}
    w = cluster_means(vecs, labels, counts, "samples")
    np.testing.assert_array_equal(w[0], np.array([3.25, 2.25], dtype=np.float32))
    np.testing.assert_array_equal(w[1], np.array([10.0, 10.0], dtype=np.float32))
    u = cluster_means(vecs, labels, counts, "uniform")
    np.testing.assert_array_equal(u[0], np.array([2.5, 1.5], dtype=np.float32))
    out = redistribute(w, labels)
    np.testing.assert_array_equal(out["a/0"], w[0])
    np.testing.assert_array_equal(out["b/0"], w[0])
    out["a/0"][0] = 99  # each slot gets its own copy
    assert w[0][0] == 3.25 and out["b/0"][0] == 3.25


def test_inputs_not_modified() -> None:
    a = np.array([1.0, 2.0], dtype=np.float32)
    weighted_mean([a, a * 3], [1, 1])
    np.testing.assert_array_equal(a, [1.0, 2.0])


def test_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="shapes"):
        weighted_mean([np.zeros(2), np.zeros(3)], [1, 1])
    with pytest.raises(ValueError, match="NaN"):
        weighted_mean([np.array([np.nan]), np.zeros(1)], [1, 1])
    with pytest.raises(ValueError, match="sum to"):
        weighted_mean([np.zeros(1)], [0])
    with pytest.raises(ValueError, match="unknown weighting"):
        weighted_mean([np.zeros(1)], [1], "median")
    with pytest.raises(ValueError, match="same slots"):
        cluster_means({"a": np.zeros(1)}, {"b": 0}, {"a": 1})
    with pytest.raises(ValueError, match="no mean"):
        redistribute({0: np.zeros(1)}, {"a": 1})


# ------------------------------------------------------------------ per-entry (head trimming) means
def test_masked_mean_rows_of_one_member_are_that_members_rows() -> None:
    g = np.random.default_rng(3)
    a, b, fill = (g.normal(size=6).astype(np.float32) for _ in range(3))
    ma = np.array([True, True, True, True, False, False])  # a uses 4 entries
    mb = np.array([True, True, False, False, False, False])  # b uses 2
    out = weighted_mean([a, b], [3, 1], masks=[ma, mb], fill=fill)
    np.testing.assert_array_equal(out[2:4], a[2:4])  # only a uses these
    np.testing.assert_array_equal(out[4:], fill[4:])  # nobody: stays at the fill (the initial values)
    np.testing.assert_allclose(out[:2], (3 * a[:2].astype(np.float64) + b[:2]) / 4, rtol=1e-6)


def test_masked_mean_of_one_task_equals_the_plain_mean_exactly() -> None:
    g = np.random.default_rng(4)
    vecs = [g.normal(size=50).astype(np.float32) for _ in range(5)]
    counts = [7, 1, 30, 2, 11]
    mask = np.arange(50) < 40
    fill = g.normal(size=50).astype(np.float32)
    for weighting in ("samples", "uniform"):
        plain = weighted_mean(vecs, counts, weighting)
        masked = weighted_mean(vecs, counts, weighting, masks=[mask] * 5, fill=fill)
        np.testing.assert_array_equal(masked[mask], plain[mask])
        np.testing.assert_array_equal(masked[~mask], fill[~mask])
    keys = [f"s{i}/0" for i in range(5)]
    full = np.ones(50, bool)
    means = cluster_means(dict(zip(keys, vecs)), dict.fromkeys(keys, 0), dict(zip(keys, counts)),
                          masks=dict.fromkeys(keys, full))
    np.testing.assert_array_equal(means[0], weighted_mean(vecs, counts))


def test_masked_mean_refuses_bad_masks_and_a_missing_fill() -> None:
    v = [np.zeros(4, np.float32), np.ones(4, np.float32)]
    m = np.array([True, True, False, False])
    with pytest.raises(ValueError, match="fill vector of shape"):
        weighted_mean(v, [1, 1], masks=[m, m])
    with pytest.raises(ValueError, match="2 vectors but 1 masks"):
        weighted_mean(v, [1, 1], masks=[m], fill=v[0])
    with pytest.raises(ValueError, match="boolean arrays"):
        weighted_mean(v, [1, 1], masks=[m, m[:3]], fill=v[0])
    with pytest.raises(ValueError, match="boolean arrays"):
        weighted_mean(v, [1, 1], masks=[m, m.astype(int)], fill=v[0])
    with pytest.raises(ValueError, match="mismatch"):
        cluster_means({"a/0": v[0]}, {"a/0": 0}, {"a/0": 1}, masks={"b/0": m})
    # a member with weight 0 does not make an entry "held"
    out = weighted_mean(v, [0, 1], masks=[np.ones(4, bool), m], fill=np.full(4, 9, np.float32))
    np.testing.assert_array_equal(out, [1, 1, 9, 9])
