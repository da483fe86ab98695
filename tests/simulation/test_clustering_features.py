"""clustering.features: each choice sketches exactly the slice it names; head and head-delta run in FL-TAC."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from fltac_secure.federation.rounds import clustering_features, client_round, sketch_features
from fltac_secure.learning.adapters import adapter_layout
from fltac_secure.plan.schema import CLUSTERING_FEATURES
from fltac_secure.simulation import SimContext, simulate

NEW = ("head", "head-delta")


def _expected(name: str, vec: np.ndarray, start: np.ndarray, slices: dict[str, slice]) -> np.ndarray:
    """The documented meaning of each choice, built from the layout's named pieces."""
    head = np.concatenate([vec[slices["head.weight"]], vec[slices["head.bias"]]])
    head0 = np.concatenate([start[slices["head.weight"]], start[slices["head.bias"]]])
    lora = np.concatenate([vec[s] for n, s in slices.items() if not n.startswith("head.")])
    return {"full": vec, "lora": lora, "delta": vec - start, "head": head, "head-delta": head - head0}[name]


def test_choices_are_listed_once_and_validated(plan_factory) -> None:
    assert CLUSTERING_FEATURES == ("full", "lora", "delta", "head", "head-delta")
    for name in CLUSTERING_FEATURES:
        assert plan_factory(features=name).clustering.features == name
    with pytest.raises(ValidationError, match="features"):
        plan_factory(features="head_delta")
    with pytest.raises(ValueError, match="head-delta"):
        clustering_features(np.zeros(4), np.zeros(4), 2, "heads")


@pytest.mark.parametrize("name", CLUSTERING_FEATURES)
def test_each_choice_is_exactly_its_slice(plan_factory, name: str) -> None:
    layout = adapter_layout(plan_factory())
    slices = layout.slices()
    assert list(slices)[-2:] == ["head.weight", "head.bias"]  # LoRA first, then the head
    rng = np.random.default_rng(1)
    vec, start = rng.standard_normal(layout.size), rng.standard_normal(layout.size)
    got = clustering_features(vec, start, layout.lora_size, name)
    np.testing.assert_array_equal(got, _expected(name, vec, start, slices))
    if name.startswith("head"):
        assert got.shape == (layout.size - layout.lora_size,)


@pytest.mark.parametrize("name", NEW)
def test_client_round_sketches_the_head_slice(plan_factory, data, name: str) -> None:
    plan = plan_factory(rounds=1, features=name, sketch_dim=16)
    plan = plan.model_copy(update={"training": plan.training.model_copy(update={"local_steps": 2})})
    ctx = SimContext(plan, data)
    layout = adapter_layout(plan)
    site = ctx.sites[0]
    slots = ctx.slots_of(site)
    rng = np.random.default_rng(2)
    starts = {s.key: rng.standard_normal(layout.size).astype(np.float32) * 0.05 for s in slots}
    results = client_round(ctx.model, site, slots, starts, 0, plan)
    assert [r.key for r in results] == [s.key for s in slots]
    for r in results:
        want = _expected(name, r.vector, starts[r.key], layout.slices())
        assert want.shape == (layout.size - layout.lora_size,)
        np.testing.assert_allclose(r.sketch, sketch_features(plan, 0, want[None])[0], rtol=1e-6, atol=1e-7)
        assert not np.allclose(r.vector[layout.lora_size:], starts[r.key][layout.lora_size:])  # the head trained


@pytest.mark.parametrize("name", NEW)
def test_fltac_runs_with_head_features(plan_factory, data, tmp_path, name: str) -> None:
    plan = plan_factory(rounds=2, features=name, sketch_dim=32)
    plan = plan.model_copy(update={"training": plan.training.model_copy(update={"local_steps": 5})})
    res = simulate(plan, data, "fltac", tmp_path / name, progress=False, export=False, plots=False,
                   site_eval=False, context=SimContext(plan, data))
    assert [r["round"] for r in res.rounds] == [0, 1]
    assert all(-1.0 <= r["ari"] <= 1.0 for r in res.rounds)
    assert 0.0 <= res.final["mean_accuracy"] <= 1.0
