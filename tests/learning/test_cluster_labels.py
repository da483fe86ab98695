"""clustering.by_labels: slots of different label counts never share a cluster; the sketches decide within one."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from fltac_secure.learning.cluster import cluster_sketches


def _noise(keys: list[str], dim: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {key: rng.standard_normal(dim) for key in keys}


def _ari(truth: dict[str, int], labels: dict[str, int]) -> float:
    keys = list(truth)
    return float(adjusted_rand_score([truth[k] for k in keys], [labels[k] for k in keys]))


def test_pure_noise_sketches_still_split_by_label_count() -> None:
    """Sketches that carry no task signal (DP noise): K-means alone mixes the tasks, by_labels does not."""
    keys = [f"site{i:02d}/{j}" for i in range(8) for j in range(3)]
    kinds = {key: (2, 5, 10)[int(key[-1])] for key in keys}
    sketches = _noise(keys)
    plain = cluster_sketches(sketches, 3, seed=0, groups={k: k.split("/")[0] for k in keys})
    assert _ari(kinds, plain.labels) < 0.5
    split = cluster_sketches(sketches, 3, seed=0, groups={k: k.split("/")[0] for k in keys}, kinds=kinds,
                             quota={2: 1, 5: 1, 10: 1})
    assert _ari(kinds, split.labels) == 1.0
    for cid in split.sizes:
        assert len({kinds[k] for k in split.members(cid)}) == 1


def test_within_a_label_count_the_sketches_decide_and_the_quota_caps_clusters() -> None:
    """Two binary tasks (planted apart) and one 3-label task made of two sub-blobs: with quota {2: 2, 3: 1} the
    binary slots get two clusters and the 3-label slots one, although splitting the 3-label slots would lower
    the K-means objective more; without the quota the extra cluster goes where the objective drops most."""
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((2, 16)) * 3
    sketches, truth, kinds = {}, {}, {}
    for i in range(6):
        for j, (kind, task) in enumerate(((2, 0), (2, 1), (3, 2))):
            key = f"s{i}/{j}"
            base = centres[task] if kind == 2 else (100.0 if i % 2 else -100.0) * np.ones(16)
            sketches[key] = base + rng.standard_normal(16) * 0.1
            truth[key], kinds[key] = task, kind
    capped = cluster_sketches(sketches, 3, normalize=False, seed=0, kinds=kinds, quota={2: 2, 3: 1})
    assert _ari(truth, capped.labels) == 1.0
    free = cluster_sketches(sketches, 3, normalize=False, seed=0, kinds=kinds)
    assert len({free.labels[k] for k in sketches if kinds[k] == 3}) == 2  # the far-apart sub-blobs won
    assert len({free.labels[k] for k in sketches if kinds[k] == 2}) == 1
    for res in (capped, free):
        for cid in res.sizes:
            assert len({kinds[k] for k in res.members(cid)}) == 1


def test_ids_stay_stable_across_rounds_with_labels() -> None:
    keys = [f"site{i:02d}/{j}" for i in range(5) for j in range(2)]
    kinds = {key: (2, 4)[int(key[-1])] for key in keys}
    first = cluster_sketches(_noise(keys, seed=1), 2, seed=0, kinds=kinds, quota={2: 1, 4: 1})
    second = cluster_sketches(_noise(keys, seed=2), 2, seed=1, kinds=kinds, quota={2: 1, 4: 1}, previous=first)
    assert second.labels == first.labels


def test_refused_inputs_name_the_problem() -> None:
    keys = ["a/0", "b/0", "c/0"]
    with pytest.raises(ValueError, match="3 different label counts .* only 2 clusters; raise clustering.k"):
        cluster_sketches(_noise(keys), 2, kinds={"a/0": 2, "b/0": 3, "c/0": 4})
    with pytest.raises(ValueError, match=r"no label count for slot\(s\) \['c/0'\]"):
        cluster_sketches(_noise(keys), 2, kinds={"a/0": 2, "b/0": 3})


def test_each_label_count_is_partitioned_once_per_cluster_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """Handing out the extra clusters reruns K-means only for cluster counts not yet tried: the trial a label
    count loses is kept for the next pass, not recomputed (the labels are the same either way: K-means is
    seeded)."""
    from fltac_secure.learning import cluster

    calls: list[tuple[int, int]] = []
    real = cluster._partition

    def counted(x: np.ndarray, k: int, *args: object, **kw: object) -> tuple[np.ndarray, tuple[str, ...], int]:
        calls.append((x.shape[0], k))
        return real(x, k, *args, **kw)

    monkeypatch.setattr(cluster, "_partition", counted)
    keys = [f"s{i:02d}/{j}" for j, sites in enumerate((10, 7, 4)) for i in range(sites)]  # row counts tell kinds apart
    kinds = {key: (2, 5, 10)[int(key[-1])] for key in keys}
    res = cluster_sketches(_noise(keys), 8, seed=0, kinds=kinds)
    assert len(res.sizes) == 8
    assert len(calls) == len(set(calls))  # no (label count, cluster count) partitioned twice
    for cid in res.sizes:
        assert len({kinds[k] for k in res.members(cid)}) == 1
