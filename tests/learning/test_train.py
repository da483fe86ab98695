"""Local training and evaluation: loss goes down, runs are reproducible, labels are checked."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fltac_secure.data.dataset import TaskDataset
from fltac_secure.errors import DataError
from fltac_secure.learning.adapters import get_slot_vector, initial_vector, set_slot_vector
from fltac_secure.learning.model import SlotModel
from fltac_secure.learning.train import encode, evaluate_slot, train_slot
from fltac_secure.plan import Plan

torch.set_num_threads(1)

POS = "good great happy lovely fine nice".split()
NEG = "bad awful sad horrible poor nasty".split()


def tiny_plan() -> Plan:
    return Plan(federation="t", rounds=1, roster=["a"],
                tasks=[{"name": "x", "labels": ["neg", "pos"]}, {"name": "y", "labels": ["a", "b", "c"]}],
                model={"base": "tiny-bert", "lora": {"rank": 2, "alpha": 8}},
                training={"local_steps": 40, "batch_size": 16, "learning_rate": 0.02, "max_seq_length": 16})


def separable(n: int, seed: int) -> TaskDataset:
    """Two classes with disjoint vocabularies, variable lengths."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    texts = [" ".join(rng.choice(POS if y else NEG, rng.integers(2, 7))) for y in labels]
    return TaskDataset("x", texts, labels.astype(np.int64))


@pytest.fixture(scope="module")
def model() -> SlotModel:
    return SlotModel(tiny_plan(), ["x", "y"])


def test_encode_tokenises_once_with_offsets(model: SlotModel) -> None:
    ds = separable(10, 0)
    enc = encode(model, ds, 16, label_offset=3)
    assert enc.input_ids.shape[0] == 10 and enc.input_ids.shape[1] <= 16
    assert torch.equal(enc.labels, torch.as_tensor(ds.labels) + 3)
    b = enc.batch(torch.tensor([0, 1]))
    assert b["input_ids"].shape[1] == int(enc.lengths[:2].max())
    with pytest.raises(DataError, match="no examples"):
        encode(model, TaskDataset("x", [], np.zeros(0, np.int64)), 16)


def test_training_reduces_loss_and_learns_a_separable_task(model: SlotModel) -> None:
    plan = tiny_plan()
    train, test = encode(model, separable(200, 1), 16), encode(model, separable(100, 2), 16)
    set_slot_vector(model, "x", initial_vector(plan, 0))
    before = evaluate_slot(model, "x", test)
    out = train_slot(model, "x", train, plan.training, seed=5)
    after = evaluate_slot(model, "x", test)
    assert out["steps"] == 40 and out["last_loss"] < out["first_loss"]
    assert after["loss"] < before["loss"] * 0.7
    assert after["accuracy"] >= 0.9 and after["n"] == 100 and 0 <= after["macro_f1"] <= 1


def test_training_is_deterministic_given_seed_and_start(model: SlotModel) -> None:
    plan = tiny_plan()
    data = encode(model, separable(64, 3), 16)
    start = initial_vector(plan, 1)
    results = []
    for seed in (7, 7, 8):
        set_slot_vector(model, "x", start)
        rng_state = torch.random.get_rng_state()
        train_slot(model, "x", data, plan.training, seed=seed, steps=5)
        assert torch.equal(rng_state, torch.random.get_rng_state())  # caller's RNG untouched
        results.append(get_slot_vector(model, "x"))
    assert np.array_equal(results[0], results[1])
    assert not np.array_equal(results[0], results[2])


def test_training_one_slot_leaves_the_other_untouched(model: SlotModel) -> None:
    plan = tiny_plan()
    before = get_slot_vector(model, "y")
    train_slot(model, "x", encode(model, separable(32, 4), 16), plan.training, seed=0, steps=3)
    assert np.array_equal(get_slot_vector(model, "y"), before)


def test_masked_slot_never_predicts_an_unused_label(model: SlotModel) -> None:
    # slot "x" uses 2 of the 3 head positions; push the unused one's bias up hard
    vec = get_slot_vector(model, "x")
    vec[-1] = 1e3
    set_slot_vector(model, "x", vec)
    data = encode(model, separable(40, 5), 16)
    out = train_slot(model, "x", data, tiny_plan().training, seed=0, steps=2)
    assert np.isfinite(out["loss"])
    from fltac_secure.learning.train import predict_slot

    preds, _ = predict_slot(model, "x", data)
    assert set(preds.tolist()) <= {0, 1}


def test_labels_outside_the_slot_range_are_refused(model: SlotModel) -> None:
    data = encode(model, separable(8, 6), 16, label_offset=1)  # labels 1..2, but slot x uses [0, 2)
    with pytest.raises(DataError, match="outside the slot's label range"):
        train_slot(model, "x", data, tiny_plan().training, seed=0, steps=1)
    assert train_slot(model, "x", data, tiny_plan().training, seed=0, steps=1, label_range=(1, 3))["steps"] == 1
