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
