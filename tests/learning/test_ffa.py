"""FFA-LoRA (model.lora.train_a: false): A frozen at the plan's shared seeded start, only B and the head move."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from fltac_secure.federation.rounds import ClientSlot, client_round
from fltac_secure.federation.sizes import model_facts, model_sizes
from fltac_secure.learning.adapters import (
    adapter_layout, frozen_lora_a, get_slot_vector, initial_vector, model_layout, set_slot_vector,
)  # fmt: skip
from fltac_secure.learning.model import SlotModel
from fltac_secure.learning.train import EncodedDataset, predict_slot
from fltac_secure.plan import Plan

torch.set_num_threads(1)
warnings.filterwarnings("ignore", message=".*Full backward hook is firing.*")


def plan_with(train_a: bool | None, dp: bool = False, **privacy: object) -> Plan:
    section = {"dp": dp, **({"noise_multiplier": 1.0, "delta": 1e-3, "sample_rate": 0.5} if dp else {}), **privacy}
    return Plan(federation="t", rounds=2, roster=["a", "b"],
                tasks=[{"name": "x", "labels": ["n", "p"]}, {"name": "y", "labels": ["a", "b", "c"]}],
                model={"base": "tiny-bert", "lora": {"rank": 2, "alpha": 8, "train_a": train_a}},
                training={"local_steps": 3, "batch_size": 8, "learning_rate": 0.05, "max_seq_length": 12},
                privacy=section)


def data(n: int, labels: int, seed: int, task: str) -> EncodedDataset:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 3000, (n, 10), generator=g)
    return EncodedDataset(features={"input_ids": ids, "attention_mask": torch.ones_like(ids)},
                          labels=torch.randint(0, labels, (n,), generator=g), task=task)


def lora_a(model: SlotModel, slot: str) -> dict[str, np.ndarray]:
    return {n: t.detach().numpy().copy() for n, t in model.lora_a(slot).items()}


def test_the_default_is_ffa_under_dp_only() -> None:
    assert plan_with(None).trains_lora_a and not plan_with(None, dp=True).trains_lora_a
    assert plan_with(True, dp=True).trains_lora_a and not plan_with(False).trains_lora_a


def test_the_communicated_vector_is_b_and_the_head_only() -> None:
    full, ffa = plan_with(True), plan_with(False)
    lay_full, lay_ffa = adapter_layout(full), adapter_layout(ffa)
    assert not [n for n in lay_ffa.names if "lora_A" in n]
    assert [n for n in lay_full.names if "lora_A" not in n] == lay_ffa.names
    a_size = sum(int(np.prod(s)) for n, s in lay_full.entries if "lora_A" in n)
    assert lay_ffa.size == lay_full.size - a_size > 0
    # the same start, A left out; A itself is what frozen_lora_a regenerates
    keep = np.concatenate([np.ones(int(np.prod(s)), bool) * ("lora_A" not in n) for n, s in lay_full.entries])
    np.testing.assert_array_equal(initial_vector(ffa, 0), initial_vector(full, 0)[keep])
    sl = lay_full.slices()
    for name, a in frozen_lora_a(ffa).items():
        np.testing.assert_array_equal(a.reshape(-1), initial_vector(full, 0)[sl[name]])
    model = SlotModel(ffa, ["x", "y"])
    assert model_layout(model) == lay_ffa and get_slot_vector(model, "x").size == lay_ffa.size
    # the audit's sizes: FL-TAC counts B and the head; FedIT (A and B, as the paper trains it) is unchanged
    sizes, sizes_full = model_sizes(ffa, 8, model_facts(ffa)), model_sizes(full, 8, model_facts(full))
    assert sizes.fltac_adapter == lay_ffa.size and sizes_full.fltac_adapter == lay_full.size
    assert sizes.fedit_adapter == sizes_full.fedit_adapter


@pytest.mark.parametrize("dp", [False, True], ids=["plain", "dp"])
def test_a_never_changes_and_is_the_same_at_every_site(dp: bool) -> None:
    """Two sites, two rounds of client_round: A stays at the shared start, B and the head train."""
    plan = plan_with(False, dp=dp)
    want = frozen_lora_a(plan)
    sites = {s: SlotModel(plan, ["x", "y"]) for s in ("a", "b")}
    start = {f"{s}/{t}": initial_vector(plan, plan.training.seed) for s in sites for t in ("x", "y")}
    trainers = {}
    if dp:
        from fltac_secure.privacy.dp import DPTrainer
        from fltac_secure.privacy.ledger import PrivacyLedger

        trainers = {s: DPTrainer(m, plan, ledger=PrivacyLedger.in_memory(delta=1e-3, accountant="rdp"),
                                 insecure_seed=0) for s, m in sites.items()}
    vectors = dict(start)
    for r in range(2):
        for i, (site, model) in enumerate(sites.items()):
            slots = [ClientSlot(f"{site}/x", "x", data(40, 2, i, "x"), 40),
                     ClientSlot(f"{site}/y", "y", data(40, 3, 10 + i, "y"), 40)]
            kw = {"dp": trainers[site]} if dp else {}
            for res in client_round(model, site, slots, vectors, r, plan, **kw):
                assert res.vector.size == adapter_layout(plan).size
                vectors[res.key] = res.vector
            for slot in ("x", "y"):
                got = lora_a(model, slot)
                assert sorted(got) == sorted(want)
                for name, a in want.items():
                    np.testing.assert_array_equal(got[name], a, err_msg=f"{site} {slot} {name} round {r}")
                assert not any(p.requires_grad for p in model.lora_a(slot).values())
    b = [n for n in adapter_layout(plan).names if "lora_B" in n]
    sl = adapter_layout(plan).slices()
    for key, vec in vectors.items():  # B moved away from 0 at every slot
        assert any(np.abs(vec[sl[n]]).max() > 0 for n in b), key


def test_export_carries_the_frozen_a_and_loads_back(tmp_path) -> None:
    from fltac_secure.learning.export import export_peft, load_exported

    plan = plan_with(False)
    model = SlotModel(plan, ["y"])
    rng = np.random.default_rng(0)
    set_slot_vector(model, "y", rng.normal(size=adapter_layout(plan).size).astype(np.float32) * 0.1)
    export_peft(model, "y", tmp_path / "y", task=plan.task("y"))
    back = load_exported(tmp_path / "y", plan)
    d = data(12, 3, 5, "y")
    np.testing.assert_array_equal(predict_slot(model, "y", d)[0], predict_slot(back, "y", d)[0])
    np.testing.assert_allclose(predict_slot(model, "y", d)[1], predict_slot(back, "y", d)[1], rtol=1e-6)
    from safetensors.numpy import load_file

    saved = load_file(str(tmp_path / "y" / "adapter_model.safetensors"))
    assert any("lora_A" in k for k in saved) and any("lora_B" in k for k in saved)
