"""Dirichlet partition (seeded, exact cover, min-share rule) and the stratified split."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fltac_secure.data import TaskDataset, dirichlet_partition, train_test_split
from fltac_secure.data.partition import dirichlet_shares
from fltac_secure.errors import DataError

SITES = [f"s{i}" for i in range(10)]


def test_same_seed_same_split_other_seed_differs() -> None:
    a = dirichlet_partition(1000, SITES, 0.5, 0.01, seed=7)
    b = dirichlet_partition(1000, SITES, 0.5, 0.01, seed=7)
    c = dirichlet_partition(1000, SITES, 0.5, 0.01, seed=8)
    assert all(np.array_equal(a[s], b[s]) for s in SITES)
    assert any(not np.array_equal(a[s], c[s]) for s in SITES)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 3000),
    m=st.integers(1, 12),
    alpha=st.floats(0.05, 5.0),
    min_share=st.sampled_from([0.0, 0.01, 0.05, 0.2]),
    seed=st.integers(0, 2**31),
)
def test_every_example_exactly_once_and_min_share_rule(n, m, alpha, min_share, seed) -> None:
    sites = [f"s{i}" for i in range(m)]
    parts = dirichlet_partition(n, sites, alpha, min_share, seed)
    assert list(parts) == sites
    allidx = np.concatenate(list(parts.values()))
    assert allidx.dtype == np.int64
    assert np.array_equal(np.sort(allidx), np.arange(n))
    counts = np.array([len(parts[s]) for s in sites])
    assert not np.any((counts > 0) & (counts < min_share * n))


def test_sites_under_min_share_get_nothing_and_others_grow_proportionally() -> None:
    seed = next(s for s in range(100) if (dirichlet_shares(10, 0.5, s) < 0.01).sum() >= 2)
    shares = dirichlet_shares(10, 0.5, seed)
    parts = dirichlet_partition(10_000, SITES, 0.5, 0.01, seed)
    counts = np.array([len(parts[s]) for s in SITES])
    small = shares < 0.01
    assert np.all(counts[small] == 0) and np.all(counts[~small] > 0)
    expected = shares[~small] / shares[~small].sum() * 10_000
    assert np.all(np.abs(counts[~small] - expected) <= 1)


def test_alpha_half_over_ten_sites_gives_sites_different_numbers_of_tasks() -> None:
    held = np.zeros(10, dtype=int)
    for task in range(4):
        parts = dirichlet_partition(2000, SITES, 0.5, 0.01, seed=100 + task)
        held += np.array([len(parts[s]) > 0 for s in SITES])
    assert len(set(held.tolist())) > 1
    assert held.min() < 4


def test_a_large_alpha_gives_near_equal_shares() -> None:
    parts = dirichlet_partition(10_000, SITES, 1000.0, 0.01, seed=0)
    assert all(800 < len(p) < 1200 for p in parts.values())


def test_min_share_above_every_share_gives_all_to_the_largest() -> None:
    parts = dirichlet_partition(100, ["a", "b", "c"], 1.0, 0.9, seed=3)
    sizes = sorted(len(p) for p in parts.values())
    assert sizes == [0, 0, 100]


@pytest.mark.parametrize(
    ("sites", "alpha", "min_share", "fragment"),
    [([], 0.5, 0.01, "empty roster"), (["a", "a"], 0.5, 0.01, "duplicate"), (["a"], 0.0, 0.01, "alpha"),
     (["a"], 0.5, 1.0, "min_share")],
)
def test_bad_partition_settings_raise(sites, alpha, min_share, fragment) -> None:
    with pytest.raises(DataError, match=fragment):
        dirichlet_partition(10, sites, alpha, min_share, 0)


def _imbalanced(n_per_class=(500, 300, 70, 7)) -> TaskDataset:
    labels = np.concatenate([np.full(k, c) for c, k in enumerate(n_per_class)])
    return TaskDataset("t", [f"x{i}" for i in range(len(labels))], labels)


def test_stratified_split_keeps_label_proportions_and_covers_everything() -> None:
    ds = _imbalanced()
    train, test = train_test_split(ds, 0.2, seed=5)
    assert len(test) == round(0.2 * len(ds)) and len(train) + len(test) == len(ds)
    assert set(train.texts).isdisjoint(test.texts) and set(train.texts) | set(test.texts) == set(ds.texts)
    full = np.bincount(ds.labels)
    assert np.all(np.abs(np.bincount(test.labels, minlength=4) - 0.2 * full) <= 1)
    p_train = np.bincount(train.labels, minlength=4) / len(train)
    assert np.allclose(p_train, full / len(ds), atol=0.01)


def test_split_is_seeded() -> None:
    ds = _imbalanced()
    a, b, c = (train_test_split(ds, 0.25, seed=s)[1] for s in (1, 1, 2))
    assert a.texts == b.texts and a.texts != c.texts


@pytest.mark.parametrize(("n", "n_test"), [(1, 0), (2, 1), (3, 1), (10, 2)])
def test_tiny_sets_keep_both_parts_usable(n: int, n_test: int) -> None:
    ds = TaskDataset("t", [f"x{i}" for i in range(n)], np.zeros(n, dtype=np.int64))
    train, test = train_test_split(ds, 0.2, seed=0)
    assert (len(train), len(test)) == (n - n_test, n_test)


def test_bad_test_fraction_raises() -> None:
    with pytest.raises(DataError, match="test_fraction"):
        train_test_split(_imbalanced(), 1.0, seed=0)
