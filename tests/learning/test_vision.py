"""The image path: a tiny random ViT with LoRA on q/v learns scikit-learn's digits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fltac_secure.errors import DataError
from fltac_secure.learning.adapters import adapter_layout, get_slot_vector, initial_vector, set_slot_vector
from fltac_secure.learning.model import SlotModel
from fltac_secure.learning.train import evaluate_slot, train_slot
from fltac_secure.learning.vision import digits_split, encode_images
from fltac_secure.plan import Plan

torch.set_num_threads(1)


def vit_plan() -> Plan:
    return Plan(federation="v", rounds=1, roster=["a"],
                tasks=[{"name": "digits", "labels": [str(i) for i in range(10)]}],
                model={"base": "tiny-vit", "lora": {"rank": 4, "alpha": 8, "target_modules": ["query", "value"]}},
                training={"local_steps": 150, "batch_size": 32, "learning_rate": 0.01})


def test_vit_layout_targets_attention_projections() -> None:
    layout = adapter_layout(vit_plan())
    lora_names = [n for n in layout.names if "lora" in n]
    assert len(lora_names) == 2 * 2 * 2 and all(".q_proj." in n or ".v_proj." in n for n in lora_names)
    assert layout.entries[-2] == ("head.weight", (10, 32))


def test_vit_trains_on_digits_and_beats_chance() -> None:
    plan = vit_plan()
    train, test = digits_split(seed=0)
    model = SlotModel(plan, ["digits"], base=None)
    assert model.tokenizer is None
    set_slot_vector(model, "digits", initial_vector(plan, 0))
    start = get_slot_vector(model, "digits")
    out = train_slot(model, "digits", train, plan.training, seed=0)
    metrics = evaluate_slot(model, "digits", test)
    assert out["last_loss"] < out["first_loss"]
    assert metrics["accuracy"] > 0.4, metrics  # chance is 0.1
    lora = adapter_layout(plan).lora_size
    assert not np.array_equal(get_slot_vector(model, "digits")[:lora], start[:lora])  # LoRA itself moved


def test_encode_images_checks_shapes() -> None:
    with pytest.raises(DataError, match="shape"):
        encode_images(np.zeros((3, 8)), np.zeros(3))
    enc = encode_images(np.full((2, 8, 8), 16.0), np.array([1, 2]), value_range=(0.0, 16.0), label_offset=1)
    assert enc.features["pixel_values"].shape == (2, 1, 8, 8) and float(enc.features["pixel_values"].max()) == 1.0
    assert enc.labels.tolist() == [2, 3]
