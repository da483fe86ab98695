"""SlotModel: base loading, slot switching, trainability, logit masking, the FedIT shared-head layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fltac_secure.errors import ConfigError
from fltac_secure.learning.adapters import adapter_layout, get_slot_vector, set_slot_vector
from fltac_secure.learning.model import NEG_LOGIT, SlotModel, load_base
from fltac_secure.plan import Plan

torch.set_num_threads(1)


def tiny_plan(base: str = "tiny-bert", targets: list[str] | None = None) -> Plan:
    return Plan(federation="t", rounds=1, roster=["a"],
                tasks=[{"name": "x", "labels": ["a", "b", "c", "d"]}, {"name": "y", "labels": ["p", "q"]}],
                model={"base": base, "lora": {"rank": 1, "target_modules": targets or ["query", "value"]}})


def batch(model: SlotModel, texts: list[str]) -> dict[str, torch.Tensor]:
    enc = model.tokenizer(texts, return_tensors="pt", padding=True)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


@pytest.fixture(scope="module")
def model() -> SlotModel:
    return SlotModel(tiny_plan(), ["x", "y"])


def test_unknown_base_and_bad_targets_raise_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="neither a known name"):
        load_base("no-such-model")
    with pytest.raises(ConfigError, match="neither a known name"):
        load_base(str(tmp_path))
    with pytest.raises(ConfigError, match="matches no module"):
        SlotModel(tiny_plan(targets=["nonexistent"]), ["x"])
    with pytest.raises(ConfigError, match="Linear"):
        SlotModel(tiny_plan(targets=["word_embeddings"]), ["x"])
    with pytest.raises(ConfigError, match="distinct"):
        SlotModel(tiny_plan(), ["x", "x"])


def test_tiny_base_is_seeded_and_frozen() -> None:
    a, tok = load_base("tiny-bert", seed=1)
    b, _ = load_base("tiny-bert", seed=1)
    c, _ = load_base("tiny-bert", seed=2)
    wa, wb, wc = (m.embeddings.word_embeddings.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert not any(p.requires_grad for p in a.parameters())
    assert tok is not None and tok("hello")["input_ids"][0] == tok.cls_token_id


def test_all_adapters_stay_trainable_and_base_frozen(model: SlotModel) -> None:
    for slot in ("y", "x"):
        model.set_slot(slot)
        trainable = {id(p) for p in model.parameters() if p.requires_grad}
        assert trainable == {id(p) for p in model.adapter_parameters()}
    assert len(model.adapter_parameters()) == 2 * (2 * 2 * 2 + 2)  # 2 slots x (2 layers x q,v x A,B + head)


def test_slot_switch_changes_output_and_only_active_slot_gets_gradients(model: SlotModel) -> None:
    b = batch(model, ["hello world", "a much longer sentence here"])
    rng = np.random.default_rng(0)
    size = adapter_layout(tiny_plan()).size
    for slot in model.slots:
        set_slot_vector(model, slot, rng.normal(size=size).astype(np.float32))
    model.eval()
    model.set_slot("x")
    out_x = model(**b)
    model.set_slot("y")
    out_y = model(**b)
    assert not torch.allclose(out_x[:, :2], out_y[:, :2])
    model.zero_grad(set_to_none=True)
    out_y[:, :2].sum().backward()
    assert all(p.grad is not None for p in model.slot_parameters("y").values())
    assert all(p.grad is None for p in model.slot_parameters("x").values())
    model.zero_grad(set_to_none=True)


def test_unused_logits_are_masked_and_never_predicted(model: SlotModel) -> None:
    b = batch(model, ["one", "two three", "four five six"])
    size = adapter_layout(tiny_plan()).size
    vec = np.zeros(size, np.float32)
    vec[-4:] = [0.0, 0.0, 50.0, 60.0]  # bias favours positions 2 and 3, which task y (2 labels) does not use
    set_slot_vector(model, "y", vec)
    model.set_slot("y")
    logits = model(**b)
    assert logits.shape == (3, 4)
    assert (logits[:, 2:] == NEG_LOGIT).all() and (logits.argmax(1) < 2).all()
    assert model.label_range("x") == (0, 4) and model.label_range("y") == (0, 2)
    with pytest.raises(ValueError, match="label_range"):
        model(**b, label_range=(0, 9))


def test_fedit_style_shared_slot_with_offsets() -> None:
    plan = tiny_plan()
    width = sum(t.num_labels for t in plan.tasks)
    shared = SlotModel(plan, ["shared"], head_width=width)
    assert shared.label_range("shared") == (0, width)
    assert adapter_layout(plan, head_width=width).entries[-1] == ("head.bias", (width,))
    b = batch(shared, ["x y z"])
    logits = shared(**b, label_range=(4, 6))
    assert (logits[:, :4] == NEG_LOGIT).all() and (logits[:, 4:] > NEG_LOGIT).all()
    assert get_slot_vector(shared, "shared").shape == (adapter_layout(plan, head_width=width).size,)


def test_unknown_slot_is_a_clear_error(model: SlotModel) -> None:
    with pytest.raises(KeyError, match="unknown slot"):
        model.set_slot("nope")


def test_real_minilm_loads_offline_with_the_documented_sizes() -> None:
    plan = tiny_plan(base="minilm")
    layout = adapter_layout(plan, head_width=10)
    assert layout.lora_size == 9216 and layout.size == 9216 + 384 * 10 + 10
    model = SlotModel(plan, ["x"], head_width=10)
    assert sum(p.numel() for n, p in model.peft.named_parameters() if "lora_" not in n) == 22_713_216 - 384 * 384 - 384
    logits = model(**batch(model, ["The match ended in a draw."]))
    assert logits.shape == (1, 10) and torch.isfinite(logits[:, :4]).all()


def test_minilm_layout_from_config_only() -> None:
    layout = adapter_layout(tiny_plan(base="minilm"), head_width=10)
    assert layout.lora_size == 9216
    assert layout.size == 9216 + 384 * 10 + 10
    for r, n in ((2, 18432), (4, 36864), (8, 73728)):
        plan = tiny_plan(base="minilm").model_copy(update={"model": tiny_plan(base="minilm").model.model_copy(
            update={"lora": tiny_plan().model.lora.model_copy(update={"rank": r})})})
        assert adapter_layout(plan).lora_size == n


def test_local_folder_base_loads_like_the_named_one(tmp_path) -> None:
    base, tok = load_base("tiny-bert", seed=4)
    base.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    plan = tiny_plan(base=str(tmp_path / "m"))
    model = SlotModel(plan, ["x"])
    assert adapter_layout(plan) == adapter_layout(tiny_plan())
    again = SlotModel(tiny_plan(), ["x"], base=load_base("tiny-bert", seed=4))
    set_slot_vector(again, "x", get_slot_vector(model, "x"))
    b = batch(model, ["same weights, same logits"])
    model.eval()
    again.eval()
    with torch.no_grad():
        assert torch.allclose(model(**b), again(**b), atol=1e-6)


def test_opacus_can_wrap_once_and_switch_slots() -> None:
    """The DP layer's contract: wrap once with every adapter trainable, then set_slot per task."""
    from opacus import GradSampleModule

    model = SlotModel(tiny_plan(), ["x", "y"]).train()
    wrapped = GradSampleModule(model)
    b = batch(model, ["hello world", "foo", "bar baz qux"])
    for slot in ("x", "y", "x"):
        model.set_slot(slot)
        logits = wrapped(**b)
        assert isinstance(logits, torch.Tensor)
        torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 0])).backward()
        for p in model.slot_parameters(slot).values():
            assert p.grad_sample is not None and p.grad_sample.shape[0] == 3
        wrapped.zero_grad(set_to_none=True)
