"""DP in the round logic: with privacy.dp on, client_round trains through the site's DPTrainer (passed
explicitly, never looked up), reports epsilon, and a slot out of budget stops contributing while the
site's other slots carry on. The accounting lives with the trainer: a missing or mis-wired trainer is
refused, and an equal plan in a later round does not restart it."""

from __future__ import annotations

import numpy as np
import pytest

from fltac_secure.errors import PrivacyError
from fltac_secure.federation.rounds import ClientSlot, client_round
from fltac_secure.learning.adapters import initial_vector
from fltac_secure.learning.model import SlotModel
from fltac_secure.plan import Plan
from fltac_secure.privacy.accounting import SlotAccountant
from fltac_secure.privacy.dp import DPTrainer
from fltac_secure.privacy.settings import resolve_slot

from .conftest import dp_plan, memory_ledger, random_data


@pytest.fixture(scope="module")
def model() -> SlotModel:
    return SlotModel(dp_plan(), ["x", "y"])


def site_slots() -> list[ClientSlot]:
    return [ClientSlot("a/0", "x", random_data(200, 2, task="x"), 200),
            ClientSlot("a/1", "y", random_data(40, 3, task="y"), 40)]


def test_client_round_trains_with_dp_and_honours_budgets(model: SlotModel) -> None:
    probe = dp_plan()
    steps, b, delta = probe.privacy.local_steps, probe.privacy.max_batch_size, probe.privacy.delta
    eps = {n: [SlotAccountant("rdp", [(1.0, b / n, steps * r)]).epsilon(delta) for r in (1, 2)] for n in (40, 200)}
    target = eps[40][0]  # the small slot affords one round, the large one at least two
    assert eps[200][1] <= target
    plan = dp_plan(target_epsilon=target)
    dp = DPTrainer(model, plan, ledger=memory_ledger(plan))
    slots = site_slots()
    start = {s.key: initial_vector(plan, 0) for s in slots}
    first = client_round(model, "a", slots, start, 0, plan, dp=dp)
    assert [r.key for r in first] == ["a/0", "a/1"]
    assert first[1].stats["epsilon"] == pytest.approx(eps[40][0], rel=1e-12)
    assert first[0].stats["stopped_on_budget"] == 0 and not np.allclose(first[0].vector, start["a/0"])
    second = client_round(model, "a", slots, {r.key: r.vector for r in first}, 1, plan, dp=dp)
    assert [r.key for r in second] == ["a/0"]  # a/1 is out of budget and sends nothing
    assert second[0].stats["epsilon"] == pytest.approx(eps[200][1], rel=1e-12)
    assert dp.ledger.epsilons() == {"x": second[0].stats["epsilon"], "y": first[1].stats["epsilon"]}


def test_dp_on_without_a_trainer_is_refused(model: SlotModel) -> None:
    plan = dp_plan()
    slots = site_slots()
    with pytest.raises(PrivacyError, match=r"privacy.dp is on but the round of site 'a' was given no DP trainer"):
        client_round(model, "a", slots, {s.key: initial_vector(plan, 0) for s in slots}, 0, plan)


def test_a_mis_wired_trainer_is_refused(model: SlotModel) -> None:
    plan = dp_plan()
    dp = DPTrainer(model, plan, ledger=memory_ledger(plan))
    slots = site_slots()
    start = {s.key: initial_vector(plan, 0) for s in slots}
    off = Plan.model_validate({**plan.model_dump(), "privacy": {**plan.privacy.model_dump(), "dp": False}})
    with pytest.raises(PrivacyError, match="privacy.dp is off but the round of site 'a' was given a DP trainer"):
        client_round(model, "a", slots, start, 0, off, dp=dp)
    other = dp_plan(noise_multiplier=2.0)
    with pytest.raises(PrivacyError, match="built under another plan"):
        client_round(model, "a", slots, start, 0, other, dp=dp)
    with pytest.raises(PrivacyError, match="wraps another model"):
        client_round(SlotModel(plan, ["x", "y"]), "a", slots, start, 0, plan, dp=dp)
    assert dp.ledger.slots == {}  # nothing was charged


def test_epsilon_accumulates_across_rounds_under_an_equal_but_new_plan_object(model: SlotModel) -> None:
    plan = dp_plan()
    dp = DPTrainer(model, plan, ledger=memory_ledger(plan))
    slots = site_slots()[1:]
    first = client_round(model, "a", slots, {"a/1": initial_vector(plan, 0)}, 0, plan, dp=dp)
    again = Plan.model_validate(plan.model_dump())  # what a reloaded plan file gives: equal, not identical
    assert again == plan and again is not plan
    second = client_round(model, "a", slots, {"a/1": first[0].vector}, 1, again, dp=dp)
    cfg = resolve_slot(plan, 40)
    one, two = (SlotAccountant(cfg.accountant, [(cfg.noise_multiplier, cfg.sample_rate, cfg.steps_per_round * r)])
                .epsilon(cfg.delta) for r in (1, 2))
    assert first[0].stats["epsilon"] == pytest.approx(one, rel=1e-12)
    assert second[0].stats["epsilon"] == pytest.approx(two, rel=1e-12)  # not restarted from zero
    assert two > one
    assert [e.round for e in dp.ledger.slots["y"].rounds] == [0, 1]
