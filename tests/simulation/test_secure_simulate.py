"""Simulation with secure aggregation: the same clusters and, within the encoding bound, the same adapters."""

from __future__ import annotations

import numpy as np
import pytest

from fltac_secure.plan.schema import Plan
from fltac_secure.simulation import SimContext, simulate


@pytest.fixture(scope="module")
def pair(plan, data, tmp_path_factory):
    secure = Plan.model_validate({**plan.model_dump(), "secure_aggregation": {"enabled": True}})
    root = tmp_path_factory.mktemp("secure-sim")
    plain_run = simulate(plan, data, "fltac", root / "plain", progress=False, export=False, plots=False,
                         context=SimContext(plan, data))
    ctx = SimContext(secure, data)
    secure_run = simulate(secure, data, "fltac", root / "secure", progress=False, export=False, plots=False,
                          context=ctx)
    return plain_run, secure_run, secure


def test_secure_simulation_matches_the_plain_one(pair) -> None:
    plain, secure, _ = pair
    assert [r["ari"] for r in secure.rounds] == [r["ari"] for r in plain.rounds]
    assert [r["cluster_tasks"] for r in secure.rounds] == [r["cluster_tasks"] for r in plain.rounds]
    for task, vec in plain.vectors.items():
        assert np.max(np.abs(secure.vectors[task] - vec)) < 1e-4, task
    for task, acc in plain.final["tasks"].items():
        assert secure.final["tasks"][task]["accuracy"] == pytest.approx(acc["accuracy"], abs=0.005)
