"""DP-SGD through Opacus on the multi-adapter model: hooks, clipping, noise, budgets, restarts."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fltac_secure.errors import DataError, PrivacyError
from fltac_secure.learning.model import SlotModel
from fltac_secure.privacy.accounting import SlotAccountant
from fltac_secure.privacy.dp import DPTrainer, dp_step, make_dp_optimizer, wrap_model
from fltac_secure.privacy.ledger import PrivacyLedger

from .conftest import dp_plan, memory_ledger, random_data


@pytest.fixture(scope="module")
def model() -> SlotModel:
    m = SlotModel(dp_plan(), ["x", "y"])
    m.eval()  # trap 2: wrap_model must put it in train mode itself
    return m


def snapshot(model: SlotModel, slot: str) -> dict[str, torch.Tensor]:
    return {k: p.detach().clone() for k, p in model.slot_parameters(slot).items()}


def restore(model: SlotModel, slot: str, snap: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for k, p in model.slot_parameters(slot).items():
            p.copy_(snap[k])


def one_dp_step(model: SlotModel, slot: str, data, idx, *, noise: float, clip: float, lr: float = 0.5,
                seed: int = 0) -> dict[str, torch.Tensor]:
    """One DP-SGD (plain SGD inside) step from the current parameters; returns the new ones, restores."""
    gsm = wrap_model(model)
    model.set_slot(slot)
    before = snapshot(model, slot)
    params = list(model.slot_parameters(slot).values())
    opt = make_dp_optimizer(torch.optim.SGD(params, lr=lr), noise_multiplier=noise, max_grad_norm=clip,
                            expected_batch_size=len(idx), generator=torch.Generator().manual_seed(seed))
    gsm.enable_hooks()
    try:
        torch.manual_seed(123)
        dp_step(gsm, opt, data.batch(idx), data.labels[idx], model.label_range(slot), params)
    finally:
        opt.zero_grad(set_to_none=True)
        gsm.disable_hooks()
    after = snapshot(model, slot)
    restore(model, slot, before)
    return after


def one_sgd_step(model: SlotModel, slot: str, data, idx, lr: float = 0.5) -> dict[str, torch.Tensor]:
    model.set_slot(slot)
    model.train()
    before = snapshot(model, slot)
    params = list(model.slot_parameters(slot).values())
    opt = torch.optim.SGD(params, lr=lr)
    torch.manual_seed(123)
    loss = F.cross_entropy(model(**data.batch(idx)), data.labels[idx])
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    after = snapshot(model, slot)
    restore(model, slot, before)
    return after


def nudge_lora_b(model: SlotModel) -> None:
    """LoRA B starts at zero (so A gets no gradient); give every B a small value for the tests."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for slot in model.slots:
            for k, p in model.slot_parameters(slot).items():
                if "lora_B" in k:
                    p.copy_(0.1 * torch.randn(p.shape, generator=g))


def test_wraps_once_and_per_example_grads_exist_for_the_active_slot_only(model: SlotModel) -> None:
    gsm = wrap_model(model)
    assert wrap_model(model) is gsm and model.training
    data = random_data(6, 2, task="x")
    gsm.enable_hooks()
    try:
        for active in ("x", "y", "x"):  # switching slots after wrapping: trap 1 must not bite
            model.set_slot(active)
            F.cross_entropy(gsm(**data.batch(torch.arange(6))), data.labels).backward()
            for slot in model.slots:
                for name, p in model.slot_parameters(slot).items():
                    gs = getattr(p, "grad_sample", None)
                    if slot == active:
                        assert gs is not None and gs.shape == (6, *p.shape), name
                    else:
                        assert gs is None, f"{slot}:{name} got per-example grads while {active} was active"
            for p in model.adapter_parameters():
                p.grad_sample, p.grad = None, None
    finally:
        gsm.disable_hooks()


def test_noise_zero_and_huge_clip_equals_plain_sgd(model: SlotModel) -> None:
    nudge_lora_b(model)
    data = random_data(12, 3)
    idx = torch.arange(8)
    dp = one_dp_step(model, "y", data, idx, noise=0.0, clip=1e6)
    sgd = one_sgd_step(model, "y", data, idx)
    before = snapshot(model, "y")
    assert any(not torch.equal(sgd[k], before[k]) for k in sgd)  # the step did something
    for k in sgd:
        torch.testing.assert_close(dp[k], sgd[k], rtol=1e-4, atol=1e-6)


def test_noise_changes_the_update(model: SlotModel) -> None:
    data = random_data(12, 3)
    idx = torch.arange(8)
    sgd = one_sgd_step(model, "y", data, idx)
    a = one_dp_step(model, "y", data, idx, noise=1.0, clip=1e6, seed=1)
    b = one_dp_step(model, "y", data, idx, noise=1.0, clip=1e6, seed=2)
    assert any(not torch.allclose(a[k], sgd[k], atol=1e-3) for k in sgd)
    assert any(not torch.allclose(a[k], b[k], atol=1e-3) for k in sgd)


def test_clipping_bounds_each_example(model: SlotModel) -> None:
    nudge_lora_b(model)
    data = random_data(12, 3)
    before = snapshot(model, "y")
    clip, lr = 1e-3, 1.0

    def update_norm(after: dict[str, torch.Tensor]) -> float:
        return float(torch.sqrt(sum(((after[k] - before[k]) ** 2).sum() for k in before)))

    for i in range(4):  # one example alone: its update is exactly the clipped gradient
        full = update_norm(one_sgd_step(model, "y", data, torch.tensor([i]), lr=lr))
        assert full > 10 * clip  # the raw gradient is far above the clip
        assert update_norm(one_dp_step(model, "y", data, torch.tensor([i]), noise=0.0, clip=clip, lr=lr)) \
            == pytest.approx(clip, rel=1e-3)
    batch = update_norm(one_dp_step(model, "y", data, torch.arange(8), noise=0.0, clip=clip, lr=lr))
    assert batch <= clip * (1 + 1e-4)  # mean of clipped gradients


def test_budget_stops_a_slot_exactly_when_the_next_round_would_exceed_it(model: SlotModel) -> None:
    base = dp_plan(rounds=5)
    data = random_data(64, 3)
    q, steps = base.privacy.max_batch_size / 64, base.privacy.local_steps
    eps = [SlotAccountant("rdp", [(1.0, q, steps * r)]).epsilon(1e-3) for r in (1, 2, 3)]
    plan = dp_plan(rounds=5, target_epsilon=eps[1])  # exactly two rounds fit (equality is allowed)
    trainer = DPTrainer(model, plan, ledger=memory_ledger(plan), insecure_seed=0)
    out = [trainer.train_slot("y", data, 1, round=r) for r in range(2)]
    assert [o["stopped_on_budget"] for o in out] == [False, False]
    assert out[1]["epsilon"] == eps[1] <= plan.privacy.target_epsilon
    before = snapshot(model, "y")
    stop = trainer.train_slot("y", data, 1, round=2)
    assert stop["stopped_on_budget"] and stop["steps"] == 0 and stop["epsilon"] == eps[1]
    assert all(torch.equal(before[k], v) for k, v in snapshot(model, "y").items())  # not trained
    rec = trainer.ledger.slots["y"]
    assert rec.stopped == {"round": 2, "epsilon": eps[1], "next_epsilon": eps[2], "target_epsilon": eps[1]}
    assert trainer.train_slot("y", data, 1, round=3)["stopped_on_budget"]  # stays stopped
    assert not trainer.train_slot("x", random_data(64, 2, task="x"), 1, round=2)["stopped_on_budget"]


def test_a_restart_resumes_the_ledger(model: SlotModel, tmp_path: Path) -> None:
    plan = dp_plan()
    kw = {"plan_hash": "h" * 64, "delta": plan.privacy.delta, "accountant": "rdp"}
    data = random_data(40, 3)
    first = DPTrainer(model, plan, ledger=PrivacyLedger.open(tmp_path, **kw))
    e1 = first.train_slot("y", data, 1, round=0)["epsilon"]
    second = DPTrainer(model, plan, ledger=PrivacyLedger.open(tmp_path, **kw))  # "restarted" site
    assert second.epsilon("y") == e1 > 0
    e2 = second.train_slot("y", data, 1, round=1)["epsilon"]
    q = 8 / 40
    assert e2 == SlotAccountant("rdp", [(1.0, q, 8)]).epsilon(plan.privacy.delta) > e1
    assert [r.round for r in PrivacyLedger.open(tmp_path, **kw).slots["y"].rounds] == [0, 1]
    with pytest.raises(PrivacyError, match="40 examples, now it has 41"):
        second.train_slot("y", random_data(41, 3), 1, round=2)


def test_empty_poisson_batches_are_noise_only_steps(model: SlotModel) -> None:
    plan = dp_plan(max_batch_size=1, local_steps=30)
    trainer = DPTrainer(model, plan, ledger=memory_ledger(plan), insecure_seed=3)
    out = trainer.train_slot("y", random_data(20, 3), 1, round=0)
    assert out["steps"] == 30 and math.isfinite(out["loss"])


def test_labels_outside_the_slot_are_refused(model: SlotModel) -> None:
    plan = dp_plan()
    with pytest.raises(DataError, match="label range"):
        DPTrainer(model, plan, ledger=memory_ledger(plan)).train_slot("x", random_data(20, 3), 1, round=0)


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.function_scoped_fixture])
@given(target=st.floats(0.5, 10.0), n=st.integers(30, 200))
def test_epsilon_after_training_never_exceeds_a_target(model: SlotModel, target: float, n: int) -> None:
    plan = dp_plan(rounds=2, noise_multiplier=None, target_epsilon=target, local_steps=2)
    trainer = DPTrainer(model, plan, ledger=memory_ledger(plan), insecure_seed=0)
    data = random_data(n, 3, seed=n)
    outs = [trainer.train_slot("y", data, 0, round=r) for r in range(plan.rounds + 1)]
    assert [o["stopped_on_budget"] for o in outs] == [False, False, True]
    assert max(o["epsilon"] for o in outs) <= target
    assert trainer.epsilon("y") <= target


def test_a_trainer_needs_an_explicit_ledger(model: SlotModel) -> None:
    plan = dp_plan()
    with pytest.raises(TypeError, match="ledger"):
        DPTrainer(model, plan)  # type: ignore[call-arg]  # no silent in-memory default
    with pytest.raises(PrivacyError, match="needs the site's privacy ledger"):
        DPTrainer(model, plan, ledger=None)  # type: ignore[arg-type]
    mem = PrivacyLedger.in_memory(delta=plan.privacy.delta, accountant="rdp")
    assert not mem.persistent and mem.path is None
    with pytest.raises(PrivacyError, match="does not match privacy.delta"):
        DPTrainer(model, plan, ledger=PrivacyLedger.in_memory(delta=1e-6, accountant="rdp"))
