"""Export: standard peft folder + head, loadable by PeftModel.from_pretrained with identical logits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from fltac_secure.errors import ConfigError, StateError
from fltac_secure.learning.adapters import adapter_layout, get_slot_vector, set_slot_vector
from fltac_secure.learning.export import export_peft, load_exported
from fltac_secure.learning.model import SlotModel, load_base
from fltac_secure.plan import Plan

torch.set_num_threads(1)


def tiny_plan(rank: int = 2) -> Plan:
    return Plan(federation="t", rounds=1, roster=["a"],
                tasks=[{"name": "x", "labels": ["a", "b", "c"]}, {"name": "y", "labels": ["p", "q"]}],
                model={"base": "tiny-bert", "lora": {"rank": rank}})


@pytest.fixture(scope="module")
def trained() -> SlotModel:
    plan = tiny_plan()
    model = SlotModel(plan, ["x", "y"])
    rng = np.random.default_rng(0)
    for slot in model.slots:  # non-zero B so the adapter really changes the encoder
        set_slot_vector(model, slot, rng.normal(scale=0.5, size=adapter_layout(plan).size).astype(np.float32))
    return model.eval()


def inputs(model: SlotModel) -> dict[str, torch.Tensor]:
    enc = model.tokenizer(["hello there", "a longer sentence with more words"], return_tensors="pt", padding=True)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def test_export_loads_with_peft_and_gives_identical_logits(trained: SlotModel, tmp_path) -> None:
    plan = tiny_plan()
    out = export_peft(trained, "y", tmp_path / "y", task=plan.task("y"))
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                      "fltac.json", "head.safetensors"]
    meta = json.loads((out / "fltac.json").read_text())
    assert meta["labels"] == ["p", "q"] and meta["label_range"] == [0, 2] and meta["base"] == "tiny-bert"

    b = inputs(trained)
    trained.set_slot("y")
    with torch.no_grad():
        expected = trained(**b, label_range=(0, trained.head_width))
        base, _ = load_base("tiny-bert")
        plain = base(**b).last_hidden_state
        peft_model = PeftModel.from_pretrained(base, out).eval()
        hidden = peft_model(**b).last_hidden_state
    assert not torch.allclose(hidden, plain)  # the adapter was really applied
    mask = b["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    head = load_file(out / "head.safetensors")
    logits = pooled @ head["head.weight"].T + head["head.bias"]
    assert torch.allclose(logits, expected, atol=1e-5)


def test_load_exported_round_trips_vector_and_logits(trained: SlotModel, tmp_path) -> None:
    plan = tiny_plan()
    export_peft(trained, "x", tmp_path / "x")
    loaded = load_exported(tmp_path / "x", plan).eval()
    assert loaded.slots == ["x"]
    assert np.array_equal(get_slot_vector(loaded, "x"), get_slot_vector(trained, "x"))
    trained.set_slot("x")
    with torch.no_grad():
        assert torch.equal(loaded(**inputs(loaded)), trained(**inputs(trained)))


def test_load_refuses_other_plans_and_incomplete_folders(trained: SlotModel, tmp_path) -> None:
    export_peft(trained, "x", tmp_path / "x")
    with pytest.raises(ConfigError, match="rank"):
        load_exported(tmp_path / "x", tiny_plan(rank=1))
    (tmp_path / "x" / "head.safetensors").unlink()
    with pytest.raises(StateError, match="head.safetensors"):
        load_exported(tmp_path / "x", tiny_plan())
    with pytest.raises(StateError, match="fltac.json"):
        load_exported(tmp_path / "empty", tiny_plan())
