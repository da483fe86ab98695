"""The per-slot accountant: agrees with Opacus, round-trips through JSON, derives noise within target."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opacus.accountants import PRVAccountant, RDPAccountant

from fltac_secure.errors import PrivacyError
from fltac_secure.privacy.accounting import (
    MAX_SENSIBLE_NOISE,
    SlotAccountant,
    epsilon_of,
    merge,
    noise_for_target,
    sample_rate,
)


@pytest.mark.parametrize(("mechanism", "cls"), [("rdp", RDPAccountant), ("prv", PRVAccountant)])
def test_epsilon_matches_opacus_for_the_same_steps(mechanism: str, cls: type) -> None:
    ours, theirs = SlotAccountant(mechanism), cls()
    schedule = [(1.1, 0.02, 30), (0.9, 0.05, 10), (1.1, 0.02, 5)]
    for noise, q, steps in schedule:
        ours.step(noise, q, steps)
        for _ in range(steps):
            theirs.step(noise_multiplier=noise, sample_rate=q)
    assert ours.history == [tuple(e) for e in theirs.history]
    assert ours.epsilon(1e-5) == pytest.approx(theirs.get_epsilon(delta=1e-5), rel=1e-12)
    assert ours.steps == 45


def test_rounds_merge_into_the_planned_history() -> None:
    acc = SlotAccountant("rdp")
    for _ in range(5):
        acc.step(0.8, 0.1, 7)
    assert acc.history == [(0.8, 0.1, 35)]
    assert acc.epsilon(1e-5) == epsilon_of([(0.8, 0.1, 35)], 1e-5, "rdp")  # bit-identical
    assert merge([(0.8, 0.1, 3)], (0.9, 0.1, 1)) == [(0.8, 0.1, 3), (0.9, 0.1, 1)]


def test_json_round_trip_is_exact() -> None:
    acc = SlotAccountant("prv")
    acc.step(1.2345678901234567, 16 / 1234, 20)
    acc.step(0.7, 0.3, 2)
    back = SlotAccountant.from_json(json.loads(json.dumps(acc.to_json())))
    assert back == acc and back.history == acc.history
    assert back.epsilon(1e-5) == acc.epsilon(1e-5)


@pytest.mark.parametrize("bad", [
    {"mechanism": "gdp", "history": []},
    {"mechanism": "rdp", "history": [[1.0, 1.5, 3]]},
    {"mechanism": "rdp", "history": [[-1.0, 0.1, 3]]},
    {"mechanism": "rdp", "history": [[1.0, 0.1, 0]]},
    {"mechanism": "rdp", "history": [[1.0, 0.1]]},
    {"mechanism": "rdp", "history": [["1", 0.1, 2]]},
    {"mechanism": "rdp"},
])
def test_malformed_state_is_refused(bad: dict) -> None:
    with pytest.raises(PrivacyError):
        SlotAccountant.from_json(bad)


def test_epsilon_grows_with_steps_and_costs_are_previewed_without_spending() -> None:
    acc = SlotAccountant("rdp")
    assert acc.epsilon(1e-5) == 0.0
    nxt = acc.epsilon_after(1.0, 0.05, 10, 1e-5)
    assert acc.steps == 0  # previewing spends nothing
    acc.step(1.0, 0.05, 10)
    assert acc.epsilon(1e-5) == nxt
    assert acc.epsilon_after(1.0, 0.05, 10, 1e-5) > nxt
    assert math.isinf(epsilon_of([(0.0, 0.05, 1)], 1e-5, "rdp"))


def test_sample_rate_is_the_rate_capped_by_the_largest_batch() -> None:
    assert sample_rate(0.5, 256, 64) == 0.5  # a small slot: half of it per step
    assert sample_rate(0.5, 256, 1024) == 0.25  # a large one: the expected batch is capped at 256
    assert sample_rate(1.0, 8, 8) == 1.0
    with pytest.raises(PrivacyError, match="privacy.sample_rate"):
        sample_rate(1.5, 256, 64)
    with pytest.raises(PrivacyError, match="at least one example"):
        sample_rate(0.5, 256, 0)


def test_an_unreachable_target_names_the_key() -> None:
    with pytest.raises(PrivacyError, match="privacy.target_epsilon"):
        noise_for_target(1e-4, 1e-5, 0.5, 1000, "rdp")
    assert noise_for_target(8.0, 1e-5, 0.01, 100, "rdp") < MAX_SENSIBLE_NOISE


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(target=st.floats(0.3, 20.0), q=st.floats(0.005, 0.5), rounds=st.integers(1, 4), steps=st.integers(1, 20))
def test_round_by_round_epsilon_never_exceeds_a_target_derived_noise(target: float, q: float, rounds: int,
                                                                     steps: int) -> None:
    try:
        noise = noise_for_target(target, 1e-5, q, rounds * steps, "rdp")
    except PrivacyError:
        return  # refused up front: never trained past the target
    acc = SlotAccountant("rdp")
    for _ in range(rounds):
        assert acc.epsilon_after(noise, q, steps, 1e-5) <= target
        acc.step(noise, q, steps)
    assert acc.epsilon(1e-5) <= target
    assert acc.epsilon_after(noise, q, steps, 1e-5) > acc.epsilon(1e-5)
