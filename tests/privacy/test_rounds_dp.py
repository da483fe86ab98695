"""DP in the round logic: with privacy.dp on, client_round trains through DPTrainer, reports epsilon,
and a slot out of budget stops contributing while the site's other slots carry on."""

from __future__ import annotations

import numpy as np
import pytest

from fltac_secure.federation.rounds import ClientSlot, client_round
from fltac_secure.learning.adapters import initial_vector
from fltac_secure.learning.model import SlotModel
from fltac_secure.privacy.accounting import SlotAccountant
from fltac_secure.privacy.dp import reset_site_trainers, site_epsilons

from .conftest import dp_plan, random_data


def test_client_round_trains_with_dp_and_honours_budgets() -> None:
    probe = dp_plan()
    steps, b, delta = probe.privacy.local_steps, probe.privacy.max_batch_size, probe.privacy.delta
    eps = {n: [SlotAccountant("rdp", [(1.0, b / n, steps * r)]).epsilon(delta) for r in (1, 2)] for n in (40, 200)}
    target = eps[40][0]  # the small slot affords one round, the large one at least two
    assert eps[200][1] <= target
    plan = dp_plan(target_epsilon=target)
    model = SlotModel(plan, ["x", "y"])
    slots = [ClientSlot("a/0", "x", random_data(200, 2, task="x"), 200),
             ClientSlot("a/1", "y", random_data(40, 3, task="y"), 40)]
    start = {s.key: initial_vector(plan, 0) for s in slots}
    reset_site_trainers(model)
    first = client_round(model, "a", slots, start, 0, plan)
    assert [r.key for r in first] == ["a/0", "a/1"]
    assert first[1].stats["epsilon"] == pytest.approx(eps[40][0], rel=1e-12)
    assert first[0].stats["stopped_on_budget"] == 0 and not np.allclose(first[0].vector, start["a/0"])
    second = client_round(model, "a", slots, {r.key: r.vector for r in first}, 1, plan)
    assert [r.key for r in second] == ["a/0"]  # a/1 is out of budget and sends nothing
    assert second[0].stats["epsilon"] == pytest.approx(eps[200][1], rel=1e-12)
    assert site_epsilons(model) == {"a": {"x": second[0].stats["epsilon"], "y": first[1].stats["epsilon"]}}
