"""Shared plans for the data tests: small synthetic federations and the shipped demo plan."""

from __future__ import annotations

import pytest

from fltac_secure.plan import DEMO_PLAN, Plan, load_plan


def synthetic_plan(sites: int = 10, tasks: int = 4, alpha: float = 0.5, max_examples: int = 400, **part) -> Plan:
    """A plan over ``sites`` sites and ``tasks`` synthetic tasks (2-4 labels each)."""
    return Plan.model_validate(
        {
            "federation": "synthetic",
            "rounds": 1,
            "roster": [f"s{i:02d}" for i in range(sites)],
            "tasks": [
                {"name": f"t{j}", "labels": [f"c{k}" for k in range(2 + j % 3)], "demo_source": "synthetic"}
                for j in range(tasks)
            ],
            "partition": {"alpha": alpha, "max_examples_per_task": max_examples, **part},
        }
    )


@pytest.fixture
def syn_plan() -> Plan:
    return synthetic_plan()


@pytest.fixture(scope="session")
def demo_plan() -> Plan:
    return load_plan(DEMO_PLAN)
