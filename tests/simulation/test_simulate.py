"""A 3-round simulation on tiny tasks: FL-TAC separates the tasks and beats FedIT; outputs are usable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fltac_secure.errors import ConfigError
from fltac_secure.learning.export import load_exported
from fltac_secure.learning.train import encode, evaluate_slot
from fltac_secure.simulation import SimContext, simulate


@pytest.fixture(scope="module")
def runs(plan, data, tmp_path_factory):
    ctx = SimContext(plan, data)
    root = tmp_path_factory.mktemp("sim")
    return {m: simulate(plan, data, m, root / m, progress=False, context=ctx) for m in ("fltac", "fedit")}


def test_fltac_separates_tasks_and_beats_fedit(runs) -> None:
    fltac, fedit = runs["fltac"], runs["fedit"]
    assert [r["ari"] for r in fltac.rounds] == [1.0, 1.0, 1.0]
    assert all(r["nmi"] == pytest.approx(1.0) for r in fltac.rounds)
    assert fltac.final["mean_accuracy"] > fedit.final["mean_accuracy"]
    assert fltac.final["mean_accuracy"] > 0.8  # chance is ~0.36
    # cluster ids stay put across rounds
    first = fltac.rounds[0]["cluster_tasks"]
    assert all(r["cluster_tasks"] == first for r in fltac.rounds)


def test_metrics_file_and_outputs(runs) -> None:
    res = runs["fltac"]
    lines = [json.loads(x) for x in (res.out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [x["round"] for x in lines] == [0, 1, 2]
    rec = lines[-1]
    assert set(rec["tasks"]) == {"a", "b", "c"} and set(rec["sites"]) == {"s1", "s2", "s3", "s4"}
    assert rec["cluster_sizes"] == {"0": 4, "1": 4, "2": 4}
    assert rec["up_params"] > rec["down_params"] > 0
    assert (res.out_dir / "accuracy.png").stat().st_size > 0 and (res.out_dir / "clusters.png").stat().st_size > 0
    assert json.loads((res.out_dir / "summary.json").read_text())["final"]["round"] == 2
    assert runs["fedit"].rounds[-1]["up_params"] < rec["up_params"]  # one adapter per site, not per slot


def test_exported_adapters_load_back_with_same_accuracy(runs, plan, data) -> None:
    res = runs["fltac"]
    model = load_exported(Path(res.adapters["c"]), plan)
    slot = model.slots[0]
    test = encode(model, data.test["c"], plan.training.max_seq_length)
    got = evaluate_slot(model, slot, test)
    assert got["accuracy"] == pytest.approx(res.final["tasks"]["c"]["accuracy"])


def test_oracle_local_central_run(plan, data, tmp_path) -> None:
    from fltac_secure.simulation.runner import simulate as sim

    small = plan.model_copy(update={"rounds": 1})
    ctx = SimContext(small, data)
    for m in ("oracle", "local", "central"):
        r = sim(small, data, m, tmp_path / m, progress=False, export=False, plots=False, site_eval=False, context=ctx)
        assert 0.0 <= r.final["mean_accuracy"] <= 1.0
        assert (r.rounds[0].get("ari") == 1.0) if m == "oracle" else ("ari" not in r.rounds[0])
        assert (r.rounds[0]["up_params"] == 0) == (m != "oracle")


def test_unknown_method_is_refused(plan, data, tmp_path) -> None:
    with pytest.raises(ConfigError, match="unknown method"):
        simulate(plan, data, "fedprox", tmp_path, progress=False)
