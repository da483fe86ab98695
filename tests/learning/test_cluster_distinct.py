"""The per-site constraint: a site's slots never share a cluster while it has at most K slots."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import adjusted_rand_score

from fltac_secure.learning.cluster import cluster_sketches, distinct_assign, site_of


def _by_site(labels: dict[str, int]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for key, cid in labels.items():
        out.setdefault(site_of(key), []).append(cid)
    return out


@st.composite
def federations(draw: st.DrawFn) -> tuple[dict[str, np.ndarray], int]:
    """Random sites with 1..k slots each, sketches anywhere (clustered, duplicated or noise)."""
    k = draw(st.integers(1, 5))
    n_sites = draw(st.integers(1, 12))
    dim = draw(st.integers(2, 8))
    seed = draw(st.integers(0, 2**16))
    spread = draw(st.sampled_from([0.0, 0.1, 1.0, 10.0]))
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, dim)) * 5
    sketches = {}
    for s in range(n_sites):
        n = draw(st.integers(1, k))
        tasks = rng.permutation(k)[:n]
        for i, t in enumerate(tasks):
            sketches[f"site{s}/{i}"] = centres[t] + spread * rng.standard_normal(dim)
    return sketches, k


@settings(max_examples=150, deadline=None)
@given(federations(), st.booleans(), st.booleans(), st.integers(0, 3))
def test_no_site_has_two_slots_in_one_cluster(fed: tuple[dict[str, np.ndarray], int], normalize: bool,
                                              center: bool, seed: int) -> None:
    sketches, k = fed
    groups = {key: site_of(key) for key in sketches}
    res = cluster_sketches(sketches, k, normalize=normalize, center=center, n_init=2, seed=seed, groups=groups)
    assert set(res.labels) == set(sketches)
    assert all(0 <= c < k for c in res.labels.values())
    for site, cids in _by_site(res.labels).items():
        assert len(set(cids)) == len(cids), (site, cids)
    assert res.crowded == ()


def test_recovers_planted_tasks_where_plain_kmeans_merges_a_sites_slots() -> None:
    # two tasks whose adapters are close (the hard pair), one easy task; every site holds all three
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0, 10.0], [0.0, 0.6, 10.0], [10.0, 0.0, 0.0]])
    sketches, truth = {}, {}
    for s in range(8):
        for t in range(3):
            key = f"s{s}/{t}"
            sketches[key] = centres[t] + 0.35 * rng.standard_normal(3)
            truth[key] = t
    keys = list(sketches)
    plain = cluster_sketches(sketches, 3, normalize=False, seed=0)
    fixed = cluster_sketches(sketches, 3, normalize=False, seed=0, groups={k: site_of(k) for k in keys})
    ari = lambda res: adjusted_rand_score([truth[k] for k in keys], [res.labels[k] for k in keys])  # noqa: E731
    assert ari(fixed) == 1.0
    assert ari(plain) < 1.0  # the constraint is what fixed it (else this test proves nothing)
    assert fixed.moved > 0


def test_more_slots_than_clusters_is_reported_and_spread_evenly() -> None:
    rng = np.random.default_rng(1)
    sketches = {f"a/{i}": rng.standard_normal(4) for i in range(5)}
    sketches.update({f"b/{i}": rng.standard_normal(4) for i in range(2)})
    res = cluster_sketches(sketches, 2, seed=0, groups={k: site_of(k) for k in sketches})
    assert res.crowded == ("a",)
    a = _by_site(res.labels)["a"]
    assert sorted(a.count(c) for c in set(a)) == [2, 3]  # as even as two clusters allow
    assert len(set(_by_site(res.labels)["b"])) == 2


def test_without_groups_nothing_changes() -> None:
    rng = np.random.default_rng(2)
    sketches = {f"s{i}/0": rng.standard_normal(5) for i in range(9)}
    a = cluster_sketches(sketches, 3, seed=4)
    b = cluster_sketches(sketches, 3, seed=4, groups={k: site_of(k) for k in sketches})
    assert a.labels == b.labels  # one slot per site: no constraint to apply
    assert a.moved == 0 and a.crowded == ()


def test_distinct_assign_is_deterministic_and_keeps_rows() -> None:
    x = np.array([[0.0, 0.0], [0.0, 0.1], [5.0, 5.0], [5.0, 5.1]])
    labels, crowded = distinct_assign(x, np.array([0, 0, 1, 1]), ["a", "a", "b", "c"], 2)
    assert crowded == ()
    assert labels[0] != labels[1]
    again, _ = distinct_assign(x, np.array([0, 0, 1, 1]), ["a", "a", "b", "c"], 2)
    assert np.array_equal(labels, again)


def test_site_of() -> None:
    assert site_of("site03/1") == "site03"
    assert site_of("a/b/2") == "a/b"
    assert site_of("lonely") == "lonely"

