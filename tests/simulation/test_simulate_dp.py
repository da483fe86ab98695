"""DP in the simulator: each run keeps its own per-site accounting, so two runs in one process (sharing
one context and model) both start from epsilon 0 and reach the same per-slot epsilons."""

from __future__ import annotations

import pytest

from fltac_secure.plan import Plan
from fltac_secure.privacy.accounting import SlotAccountant
from fltac_secure.privacy.settings import resolve_slot
from fltac_secure.simulation import SimContext, simulate


def test_two_runs_never_share_dp_accounting(plan, data, tmp_path) -> None:
    raw = plan.model_dump()
    raw.update(rounds=2)
    raw["privacy"].update(dp=True, noise_multiplier=1.0, delta=1e-3, local_steps=2, max_batch_size=16)
    dp = Plan.model_validate(raw)
    ctx = SimContext(dp, data)
    kw = {"progress": False, "site_eval": False, "export": False, "plots": False, "context": ctx}
    runs = [simulate(dp, data, "fltac", tmp_path / str(i), **kw) for i in range(2)]

    def expected(rounds: int) -> dict[str, dict[str, float]]:
        """Per site and task: epsilon after ``rounds`` rounds, counted from zero."""
        out = {}
        for site, tasks in sorted(ctx.site_tasks.items()):
            cfg = {task: resolve_slot(dp, ctx.n_train(site, task)) for task in tasks}
            out[site] = {task: SlotAccountant(c.accountant, [(c.noise_multiplier, c.sample_rate,
                                                              c.steps_per_round * rounds)]).epsilon(c.delta)
                         for task, c in cfg.items()}
        return out

    for res in runs:
        spent = [r["epsilon_spent"] for r in res.rounds]
        for got, rounds in zip(spent, (1, 2), strict=True):  # round 0 of each run: one round's worth, from 0
            assert got.keys() == expected(rounds).keys()
            for site, per_task in got.items():
                assert per_task == pytest.approx(expected(rounds)[site], rel=1e-9)
        assert res.epsilons == spent[-1]
    assert runs[0].epsilons == runs[1].epsilons


@pytest.mark.parametrize("method", ["fedit", "fedit-tagged", "fedit-taskheads"])
def test_fedit_baselines_refuse_a_dp_plan(plan, data, tmp_path, method: str) -> None:
    """The FedIT baselines train without DP-SGD: under privacy.dp they refuse rather than report non-private
    numbers as private ones."""
    from fltac_secure.errors import PrivacyError

    raw = plan.model_dump()
    raw["privacy"].update(dp=True, noise_multiplier=1.0, delta=1e-3)
    dp = Plan.model_validate(raw)
    with pytest.raises(PrivacyError, match="privacy.dp"):
        simulate(dp, data, method, tmp_path / method, progress=False, site_eval=False, export=False, plots=False)
