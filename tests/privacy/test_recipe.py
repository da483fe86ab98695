"""The DP recipe: SGD by default, large Poisson batches, no noise on head rows a task does not use,
and an accountant that covers every step at the new sampling rates (checked against Opacus's own)."""

from __future__ import annotations

import pytest
import torch
from opacus.accountants import RDPAccountant

from fltac_secure.learning.model import SlotModel
from fltac_secure.plan.protection import DP_SGD_LEARNING_RATE, DP_SGD_REFERENCE_BATCH
from fltac_secure.privacy.dp import DPTrainer, make_inner_optimizer
from fltac_secure.privacy.ledger import PrivacyLedger
from fltac_secure.privacy.settings import resolve_slot

from .conftest import dp_plan, random_data


def trainer(model: SlotModel, plan, seed: int = 0) -> DPTrainer:
    ledger = PrivacyLedger.in_memory(delta=plan.privacy.delta, accountant=plan.privacy.accountant)
    return DPTrainer(model, plan, ledger=ledger, insecure_seed=seed)


def test_sgd_is_the_default_and_adamw_a_choice() -> None:
    params = [torch.nn.Parameter(torch.zeros(3))]
    plan = dp_plan()
    assert plan.privacy.optimizer == "sgd"
    cfg = resolve_slot(plan, 100)
    opt = make_inner_optimizer(plan, params, cfg.learning_rate)
    assert type(opt) is torch.optim.SGD and opt.param_groups[0]["lr"] == cfg.learning_rate
    adam = dp_plan(optimizer="adamw")
    lr = resolve_slot(adam, 100).learning_rate
    assert lr == adam.training.learning_rate
    assert type(make_inner_optimizer(adam, params, lr)) is torch.optim.AdamW


def test_default_sgd_rate_scales_with_the_expected_batch() -> None:
    """Default: DP_SGD_LEARNING_RATE at the reference batch, linear in the slot's expected batch; a set
    privacy.learning_rate is used as it is at every slot size."""
    plan = dp_plan(sample_rate=0.5, max_batch_size=DP_SGD_REFERENCE_BATCH, delta=1e-5)
    big, small = resolve_slot(plan, 4 * DP_SGD_REFERENCE_BATCH), resolve_slot(plan, DP_SGD_REFERENCE_BATCH // 2)
    assert big.expected_batch_size == DP_SGD_REFERENCE_BATCH and big.learning_rate == DP_SGD_LEARNING_RATE
    assert small.expected_batch_size == DP_SGD_REFERENCE_BATCH // 4
    assert small.learning_rate == pytest.approx(DP_SGD_LEARNING_RATE / 4)
    assert resolve_slot(plan, 3).learning_rate == pytest.approx(DP_SGD_LEARNING_RATE * 2 / DP_SGD_REFERENCE_BATCH)
    fixed = dp_plan(sample_rate=0.5, learning_rate=0.3)
    assert {resolve_slot(fixed, n).learning_rate for n in (10, 300, 900)} == {0.3}


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_unused_head_rows_get_no_noise_and_no_update(optimizer: str) -> None:
    """Task x has 2 labels on a head of width 3: row 2 and bias 2 stay exactly as they were."""
    plan = dp_plan(noise_multiplier=2.0, optimizer=optimizer, learning_rate=0.5)
    model = SlotModel(plan, ["x", "y"])
    assert model.label_range("x") == (0, 2) and model.head_width == 3
    head = model.slot_parameters("x")
    w0, b0 = head["head.weight"].detach().clone(), head["head.bias"].detach().clone()
    out = trainer(model, plan).train_slot("x", random_data(64, 2, task="x"), 1, round=0)
    assert out["steps"] == plan.privacy.local_steps
    w1, b1 = head["head.weight"].detach(), head["head.bias"].detach()
    assert torch.equal(w1[2], w0[2]) and torch.equal(b1[2], b0[2])  # the unused row: untouched
    assert not torch.equal(w1[:2], w0[:2]) and not torch.equal(b1[:2], b0[:2])  # the used rows trained


@pytest.mark.parametrize("n", [20, 64, 300, 2000])
def test_the_accountant_covers_every_step_at_the_new_sampling_rates(n: int) -> None:
    """Sample rate min(sample_rate, max_batch_size / n); the ledger's epsilon = Opacus's RDP accountant on
    the same steps, and never above the target."""
    plan = dp_plan(rounds=3, noise_multiplier=None, target_epsilon=4.0, sample_rate=0.5, max_batch_size=100,
                   local_steps=2, delta=1e-4)
    cfg = resolve_slot(plan, n)
    assert cfg.sample_rate == pytest.approx(min(0.5, 100 / n))
    model = SlotModel(plan, ["x", "y"])
    tr = trainer(model, plan)
    data = random_data(n, 3, seed=n)
    outs = [tr.train_slot("y", data, 0, round=r) for r in range(plan.rounds)]
    opacus = RDPAccountant()
    for o in outs:
        assert not o["stopped_on_budget"] and o["steps"] == 2
        assert o["sample_rate"] == cfg.sample_rate
        for _ in range(o["steps"]):
            opacus.step(noise_multiplier=o["noise_multiplier"], sample_rate=o["sample_rate"])
        assert o["epsilon"] == pytest.approx(opacus.get_epsilon(plan.privacy.delta), rel=1e-9)
    assert max(o["epsilon"] for o in outs) <= plan.privacy.target_epsilon
    entries = tr.ledger.slots["y"].rounds
    assert sum(e.steps for e in entries) == plan.rounds * 2 and {e.sample_rate for e in entries} == {cfg.sample_rate}
