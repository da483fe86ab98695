"""Validation at the edge: impossible DP settings are refused with the plan key that is wrong."""

from __future__ import annotations

import pytest

from fltac_secure.errors import PrivacyError
from fltac_secure.plan import Plan
from fltac_secure.privacy.accounting import SlotAccountant
from fltac_secure.privacy.settings import resolve_slot

from .conftest import dp_plan


def with_privacy(plan: Plan, **changes: object) -> Plan:
    """A plan copy with privacy fields set without pydantic's checks (what a buggy caller could pass)."""
    return plan.model_copy(update={"privacy": plan.privacy.model_copy(update=changes)})


@pytest.mark.parametrize(("changes", "n", "key"), [
    ({"noise_multiplier": -0.5}, 100, "privacy.noise_multiplier"),
    ({"noise_multiplier": 0.0}, 100, "privacy.noise_multiplier"),
    ({"delta": 0.01}, 100, "privacy.delta"),
    ({"sample_rate": 0.0}, 100, "privacy.sample_rate"),
    ({"dp": False}, 100, "privacy.dp"),
    ({"noise_multiplier": None, "target_epsilon": None}, 100, "privacy.noise_multiplier"),
    ({"max_grad_norm": 0.0}, 100, "privacy.max_grad_norm"),
    ({"noise_multiplier": 0.3, "target_epsilon": 0.5}, 100, "within one round"),
    ({"noise_multiplier": None, "target_epsilon": 1e-3}, 100, "privacy.target_epsilon"),
    ({"accountant": "gdp"}, 100, "privacy.accountant"),
])
def test_impossible_settings_name_their_key(changes: dict, n: int, key: str) -> None:
    with pytest.raises(PrivacyError, match=key.replace(".", r"\.")):
        resolve_slot(with_privacy(dp_plan(), **changes), n)


def test_given_noise_is_used_and_target_noise_is_derived() -> None:
    cfg = resolve_slot(dp_plan(), 100)
    assert (cfg.noise_multiplier, cfg.noise_source, cfg.sample_rate, cfg.expected_batch_size) == (1.0, "given", 0.08, 8)
    plan = dp_plan(noise_multiplier=None, target_epsilon=3.0)
    cfg = resolve_slot(plan, 100, steps_per_round=5)
    assert cfg.noise_source == "target" and cfg.steps_per_round == 5
    planned = SlotAccountant("rdp", [(cfg.noise_multiplier, 0.08, plan.rounds * 5)]).epsilon(1e-3)
    assert 3.0 - 0.02 <= planned <= 3.0  # tight, never over
