"""Adapter layout and vectors: fixed order, exact round trips, strict checks, seeded round-0 vector."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from fltac_secure.learning.adapters import (
    adapter_layout,
    get_slot_vector,
    initial_vector,
    model_layout,
    set_slot_vector,
    tensors_to_vector,
    vector_to_tensors,
)
from fltac_secure.learning.model import SlotModel
from fltac_secure.learning.seeding import derive_seed
from fltac_secure.plan import Plan

torch.set_num_threads(1)


def tiny_plan(rank: int = 1, targets: list[str] | None = None) -> Plan:
    return Plan(federation="t", rounds=1, roster=["a"],
                tasks=[{"name": "x", "labels": ["a", "b", "c"]}, {"name": "y", "labels": ["p", "q"]}],
                model={"base": "tiny-bert", "lora": {"rank": rank, "target_modules": targets or ["query", "value"]}})


@pytest.fixture(scope="module")
def model() -> SlotModel:
    return SlotModel(tiny_plan(rank=2), ["x", "y", "z"])


def test_layout_order_is_the_documented_one() -> None:
    layout = adapter_layout(tiny_plan(rank=2))
    expected = []
    for layer in (0, 1):
        for proj in ("query", "value"):
            path = f"encoder.layer.{layer}.attention.self.{proj}"
            expected += [(f"{path}.lora_A.weight", (2, 32)), (f"{path}.lora_B.weight", (32, 2))]
    expected += [("head.weight", (3, 32)), ("head.bias", (3,))]
    assert list(layout.entries) == expected
    assert layout.lora_size == 8 * 64 and layout.size == 8 * 64 + 3 * 32 + 3
    assert layout.lora_mask().sum() == layout.lora_size and layout.lora_mask()[: layout.lora_size].all()
    assert adapter_layout(tiny_plan(rank=2)) == layout  # stable


def test_natural_module_order_puts_layer_2_before_layer_10() -> None:
    from fltac_secure.learning.adapters import layout_of

    layout = layout_of({"head.bias": (3,), "enc.layer.10.q.lora_B.weight": (4, 1), "head.weight": (3, 4),
                        "enc.layer.2.q.lora_B.weight": (4, 1), "enc.layer.2.q.lora_A.weight": (1, 4)})
    assert layout.names == ["enc.layer.2.q.lora_A.weight", "enc.layer.2.q.lora_B.weight",
                            "enc.layer.10.q.lora_B.weight", "head.weight", "head.bias"]


def test_config_layout_matches_live_model(model: SlotModel) -> None:
    assert model_layout(model) == adapter_layout(tiny_plan(rank=2))
    assert adapter_layout(tiny_plan(rank=2), head_width=7).entries[-1] == ("head.bias", (7,))


def test_round_trip_is_exact_for_every_slot(model: SlotModel) -> None:
    layout = model_layout(model)
    rng = np.random.default_rng(0)
    vecs = {s: rng.normal(size=layout.size).astype(np.float32) for s in model.slots}
    for slot, vec in vecs.items():
        set_slot_vector(model, slot, vec)
    for slot, vec in vecs.items():
        got = get_slot_vector(model, slot)
        assert got.dtype == np.float32 and got.shape == (layout.size,)
        assert np.array_equal(got, vec)
        assert np.array_equal(tensors_to_vector(layout, vector_to_tensors(layout, vec)), vec)


def test_set_one_slot_leaves_the_others_alone(model: SlotModel) -> None:
    before = {s: get_slot_vector(model, s) for s in model.slots}
    set_slot_vector(model, "y", before["y"] + 1.0)
    assert np.array_equal(get_slot_vector(model, "x"), before["x"])
    assert np.array_equal(get_slot_vector(model, "z"), before["z"])
    assert np.array_equal(get_slot_vector(model, "y"), before["y"] + 1.0)


def test_bad_vectors_are_refused_without_writing(model: SlotModel) -> None:
    before = get_slot_vector(model, "x")
    size = model_layout(model).size
    with pytest.raises(ValueError, match=f"expected \\({size},\\)"):
        set_slot_vector(model, "x", np.zeros(size - 1, np.float32))
    bad = before.copy()
    bad[-1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        set_slot_vector(model, "x", bad)
    assert np.array_equal(get_slot_vector(model, "x"), before)


def test_tensors_to_vector_is_strict() -> None:
    layout = adapter_layout(tiny_plan())
    tensors = vector_to_tensors(layout, np.zeros(layout.size, np.float32))
    extra = dict(tensors, **{"evil": np.zeros(1, np.float32)})
    with pytest.raises(ValueError, match="unexpected"):
        tensors_to_vector(layout, extra)
    missing = {k: v for k, v in tensors.items() if k != "head.bias"}
    with pytest.raises(ValueError, match="missing"):
        tensors_to_vector(layout, missing)
    wrong = dict(tensors, **{"head.weight": tensors["head.weight"].T})
    with pytest.raises(ValueError, match="shape"):
        tensors_to_vector(layout, wrong)


def test_initial_vector_shape_and_distribution() -> None:
    plan = tiny_plan(rank=2)
    layout = adapter_layout(plan)
    vec = initial_vector(plan, 3)
    parts = vector_to_tensors(layout, vec)
    for name, arr in parts.items():
        if "lora_B" in name:
            assert not arr.any()
        else:
            bound = 1 / np.sqrt(32)
            assert np.abs(arr).max() <= bound and np.abs(arr).max() > bound / 2
    assert not np.array_equal(vec, initial_vector(plan, 4))
    assert np.array_equal(vec, initial_vector(plan, 3))


def test_initial_vector_identical_in_two_processes() -> None:
    code = ("import json, sys; from fltac_secure.plan import Plan; "
            "from fltac_secure.learning.adapters import initial_vector; "
            "p = Plan.model_validate(json.loads(sys.argv[1])); "
            "print(initial_vector(p, 11).tobytes().hex())")
    plan_json = tiny_plan().model_dump_json()
    outs = [subprocess.run([sys.executable, "-c", code, plan_json], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": str(i), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}).stdout
            for i in (1, 2)]
    assert outs[0] == outs[1]
    here = initial_vector(tiny_plan(), 11)
    assert bytes.fromhex(outs[0].strip()) == here.tobytes()


def test_derive_seed_is_stable_and_unambiguous() -> None:
    assert derive_seed(0, "site1", "news", 3) == derive_seed(0, "site1", "news", 3)
    assert derive_seed("ab", "c") != derive_seed("a", "bc")
    assert derive_seed(1) != derive_seed("1")
    assert 0 <= derive_seed(5) < 2**32 and derive_seed(5, bits=63) >= 0
    assert derive_seed(0, "site1", "news", 3) == 0xA35A84C7  # pinned: must never change across releases
    with pytest.raises(TypeError):
        derive_seed(1.5)  # type: ignore[arg-type]


def test_json_layout_round_trip() -> None:
    layout = adapter_layout(tiny_plan())
    from fltac_secure.learning.adapters import Layout

    again = Layout(tuple((n, tuple(s)) for n, s in json.loads(json.dumps(layout.entries))))
    assert again == layout
