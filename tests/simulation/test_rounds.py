"""Round functions: server state round trip, assignment and aggregation, seeded client rounds."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load, save

from fltac_secure.errors import StateError
from fltac_secure.federation.rounds import (
    ServerState,
    clustering_features,
    oracle_assign,
    server_aggregate,
    server_assign,
    slot_seed,
)


@pytest.fixture
def state_and_sketches(plan_factory):
    plan = plan_factory(sketch_dim=8, normalize=False)
    rng = np.random.default_rng(0)
    keys = [f"s{i}/{j}" for i in range(4) for j in range(3)]
    state = ServerState.initial(plan, keys, np.zeros(5, np.float32))
    centres = rng.standard_normal((3, 8)) * 10
    sketches = {k: centres[int(k[-1])] + rng.standard_normal(8) * 0.1 for k in keys}
    return plan, state, sketches


def test_assign_aggregate_and_round_trip(state_and_sketches) -> None:
    plan, state, sketches = state_and_sketches
    a = server_assign(state, sketches, plan)
    assert len(set(a.labels.values())) == 3
    assert all(a.labels[k] == a.labels[k[:-1] + "0"] for k in sketches if k.endswith("/0"))
    vectors = {k: np.full(5, float(k[-1]) + (1 if k.startswith("s0") else 0), np.float32) for k in sketches}
    counts = {k: 3 if k.startswith("s0") else 1 for k in sketches}
    new = server_aggregate(state, a, vectors, counts, plan)
    assert new.round == 1 and state.round == 0
    # cluster of task j: s0 holds j+1 with weight 3, three others hold j with weight 1 -> j + 0.5
    for k in sketches:
        np.testing.assert_allclose(new.vectors[k], float(k[-1]) + 0.5)
    back = ServerState.from_tensors(load(save(new.to_tensors())))
    assert back.round == 1 and back.k == new.k
    assert back.clusters is not None and back.clusters.labels == new.clusters.labels
    for k in new.vectors:
        np.testing.assert_array_equal(back.vectors[k], new.vectors[k])
    for c in new.cluster_vectors:
        np.testing.assert_array_equal(back.cluster_vectors[c], new.cluster_vectors[c])
    # next round keeps the ids
    again = server_assign(back, {k: v * 2 for k, v in sketches.items()}, plan)
    assert again.labels == a.labels


def test_state_refuses_foreign_tensors_and_stale_assignment(state_and_sketches) -> None:
    plan, state, sketches = state_and_sketches
    bad = state.to_tensors()
    bad["evil/x"] = np.zeros(1)
    with pytest.raises(StateError, match="unexpected tensor"):
        ServerState.from_tensors(bad)
    with pytest.raises(StateError, match="round"):
        ServerState.from_tensors({"k": np.array([3])})
    a = server_assign(state, sketches, plan)
    later = ServerState(round=1, k=3, vectors=state.vectors)
    with pytest.raises(StateError, match="round 0"):
        server_aggregate(later, a, {}, {}, plan)


def test_oracle_and_features_and_seeds(state_and_sketches) -> None:
    plan, state, _ = state_and_sketches
    assert oracle_assign(state, {"s0/0": 2}, plan).labels == {"s0/0": 2}
    with pytest.raises(ValueError, match="outside"):
        oracle_assign(state, {"s0/0": 7}, plan)
    v, s = np.arange(6.0), np.ones(6)
    np.testing.assert_array_equal(clustering_features(v, s, 4, "lora"), v[:4])
    np.testing.assert_array_equal(clustering_features(v, s, 4, "delta"), v - 1)
    np.testing.assert_array_equal(clustering_features(v, s, 4, "full"), v)
    assert slot_seed(plan, "s1", "a", 0) == slot_seed(plan, "s1", "a", 0) != slot_seed(plan, "s1", "a", 1)
    assert slot_seed(plan, "s1", "a", 0) != slot_seed(plan, "s2", "a", 0)


def test_accumulated_sketches_keep_clusters_through_a_noisy_round(plan_factory) -> None:
    """clustering.accumulate: sums of each slot's sketches are clustered. After two clear rounds, a round of pure
    noise scatters fresh clusters but not the sums; the sums travel in the state and its checkpoint."""
    from sklearn.metrics import adjusted_rand_score as ari

    rng = np.random.default_rng(1)
    keys = [f"s{i}/{j}" for i in range(6) for j in range(3)]
    task = [int(k[-1]) for k in keys]
    centres = rng.standard_normal((3, 64))

    def clear() -> dict[str, np.ndarray]:
        return {k: centres[int(k[-1])] + rng.standard_normal(64) * 0.3 for k in keys}

    def noise() -> dict[str, np.ndarray]:
        return {k: rng.standard_normal(64) * 1.5 for k in keys}

    results = {}
    for accumulate in (False, True):
        plan = plan_factory(sketch_dim=64, accumulate=accumulate, distinct_per_site=False)
        state = ServerState.initial(plan, keys, np.zeros(5, np.float32))
        aris = []
        for sketches in (clear(), clear(), noise()):
            a = server_assign(state, sketches, plan)
            aris.append(ari(task, [a.labels[k] for k in keys]))
            state = server_aggregate(state, a, {k: np.zeros(5, np.float32) for k in keys}, {k: 1 for k in keys}, plan)
        results[accumulate] = (aris, state)
    assert results[False][0][:2] == [1.0, 1.0] and results[False][0][2] < 0.5  # fresh: the noisy round scatters
    assert results[True][0] == [1.0, 1.0, 1.0]  # accumulated: it does not
    state = results[True][1]
    assert sorted(state.sketch_sums) == sorted(keys) and results[False][1].sketch_sums == {}
    back = ServerState.from_tensors(load(save(state.to_tensors())))
    for k in keys:
        np.testing.assert_array_equal(back.sketch_sums[k], state.sketch_sums[k])


def test_settled_clusters_survive_a_noisy_round_and_report_separation(plan_factory) -> None:
    """clustering.settle: a round of pure noise (separation near 0, below the threshold) keeps the settled
    clusters; without settle it scatters them. Every round reports its separation."""
    from sklearn.metrics import adjusted_rand_score as ari

    rng = np.random.default_rng(1)
    keys = [f"s{i}/{j}" for i in range(6) for j in range(3)]
    task = [int(k[-1]) for k in keys]
    centres = rng.standard_normal((3, 64))
    rounds = [{k: centres[int(k[-1])] + rng.standard_normal(64) * 0.3 for k in keys},
              {k: rng.standard_normal(64) * 1.5 for k in keys}]
    results = {}
    for settle in (None, 0.15):
        plan = plan_factory(sketch_dim=64, settle=settle, distinct_per_site=False)
        state = ServerState.initial(plan, keys, np.zeros(5, np.float32))
        rows = []
        for sketches in rounds:
            a = server_assign(state, sketches, plan)
            rows.append((ari(task, [a.labels[k] for k in keys]), a.clusters.separation, a.clusters.kept))
            state = server_aggregate(state, a, {k: np.zeros(5, np.float32) for k in keys}, {k: 1 for k in keys}, plan)
        results[settle] = rows
    (a0, s0, k0), (a1, s1, k1) = results[None]
    assert a0 == 1.0 and s0 > 0.5 and not k0 and a1 < 0.5 and s1 < 0.15 and not k1
    (b0, _, _), (b1, t1, kept) = results[0.15]
    assert b0 == 1.0 and b1 == 1.0 and kept and t1 is not None and t1 < s1
