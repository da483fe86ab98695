"""The federation's data: built in memory, written by prepare_demo, read back identically."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fltac_secure.cli import app, main
from fltac_secure.data import (
    FederatedData,
    TaskDataset,
    build_federated_data,
    load_federated_dir,
    prepare_demo,
)
from fltac_secure.errors import DataError
from fltac_secure.plan import Plan, Task, load_site

from .conftest import synthetic_plan


def _unique_loader(task: Task, *, max_examples: int | None, seed: int) -> TaskDataset:
    """Every example has its own text, so we can count where each one went."""
    n = max_examples or 500
    return TaskDataset(task.name, [f"{task.name}-{i}" for i in range(n)], np.arange(n) % task.num_labels)


def _all_texts(fed: FederatedData, task: str) -> list[str]:
    out = list(fed.test[task].texts)
    for s in fed.sites:
        for part in (fed.train.get(s, {}), fed.site_test.get(s, {})):
            if task in part:
                out += part[task].texts
    return out


def test_every_example_lands_in_exactly_one_place(syn_plan: Plan) -> None:
    fed = build_federated_data(syn_plan, loader=_unique_loader)
    for task in syn_plan.tasks:
        texts = _all_texts(fed, task.name)
        assert sorted(texts) == sorted(f"{task.name}-{i}" for i in range(400))
        assert len(fed.test[task.name]) == 80
    assert all(len(ds) > 0 for tasks in fed.train.values() for ds in tasks.values())
    assert set(fed.site_test) <= set(fed.train)


def test_sites_hold_different_numbers_of_tasks_and_every_site_holds_one(syn_plan: Plan) -> None:
    fed = build_federated_data(syn_plan)
    held = [len(fed.tasks_of(s)) for s in syn_plan.roster]
    assert min(held) >= 1 and len(set(held)) > 1


def test_build_is_seeded(syn_plan: Plan) -> None:
    a, b = build_federated_data(syn_plan), build_federated_data(syn_plan)
    c = build_federated_data(syn_plan, seed=1)
    assert a.counts() == b.counts() and a.counts() != c.counts()
    s, t = next((s, t) for s in a.sites for t in a.tasks_of(s))
    assert a.train[s][t].texts == b.train[s][t].texts


def test_impossible_requirement_is_a_clear_error() -> None:
    plan = synthetic_plan(sites=10, tasks=1, alpha=0.01, max_examples=20, min_share=0.5)
    with pytest.raises(DataError, match="gave every site data"):
        build_federated_data(plan)
    fed = build_federated_data(plan, require_every_site=False)
    assert len(fed.train) == 1


def _assert_same(a: dict[str, TaskDataset], b: dict[str, TaskDataset]) -> None:
    assert list(a) == list(b)
    for t in a:
        assert a[t].texts == b[t].texts and np.array_equal(a[t].labels, b[t].labels)


def _check_round_trip(plan: Plan, out: Path) -> None:
    fed = build_federated_data(plan)
    assert prepare_demo(plan, out) == out
    for s in plan.roster:
        site = load_site(out / s / "site.yaml", plan)
        assert site.role == "collaborator" and site.name == s
        assert site.certs.cert == (out / s / "certs" / f"{s}.crt").resolve()
        assert set(site.data) == set(fed.tasks_of(s))
        assert site.aggregator == "tcp://127.0.0.1:5555"
    agg = load_site(out / "aggregator" / "site.yaml", plan)
    assert agg.role == "aggregator" and agg.bind and agg.certs.crl == (out / "aggregator/certs/crl.pem").resolve()
    back = load_federated_dir(plan, out)
    _assert_same(fed.test, back.test)
    for s in plan.roster:
        _assert_same(fed.train[s], back.train[s])
        _assert_same(fed.site_test.get(s, {}), back.site_test.get(s, {}))
    summary = json.loads((out / "partition.json").read_text())
    assert summary["sites"] == fed.counts() and summary["test"] == {t: len(d) for t, d in fed.test.items()}


def test_prepare_demo_round_trip_synthetic(tmp_path: Path) -> None:
    _check_round_trip(synthetic_plan(sites=4, tasks=3, max_examples=120), tmp_path / "out")


def test_prepare_demo_round_trip_shipped_data(demo_plan: Plan, tmp_path: Path) -> None:
    _check_round_trip(demo_plan, tmp_path / "out")
    assert not list((tmp_path / "out").rglob("*.tmp"))  # atomic writes leave no temp files


def test_prepare_demo_refuses_a_foreign_folder_and_reserved_names(syn_plan: Plan, tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(DataError, match="not empty"):
        prepare_demo(syn_plan, tmp_path)
    plan = Plan.model_validate({**syn_plan.model_dump(), "roster": ["test", "s1"]})
    with pytest.raises(DataError, match="clash"):
        prepare_demo(plan, tmp_path / "new")


def test_load_federated_dir_names_what_is_missing(syn_plan: Plan, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_federated_dir(syn_plan, tmp_path / "nothing")
    tmp_path.joinpath("empty").mkdir()
    with pytest.raises(DataError, match="s00/site.yaml is missing"):
        load_federated_dir(syn_plan, tmp_path / "empty")


def test_cli_prepare_demo_prints_the_table(tmp_path: Path) -> None:
    plan = synthetic_plan(sites=3, tasks=2, max_examples=60)
    plan_file = tmp_path / "plan.json"  # JSON is YAML
    plan_file.write_text(json.dumps(plan.model_dump(mode="json")))
    runner = CliRunner()
    res = runner.invoke(app, ["data", "prepare-demo", "--plan", str(plan_file), "--out", str(tmp_path / "o"), "--seed", "3"])
    assert res.exit_code == 0, res.output
    assert "s00" in res.output and "global test" in res.output and "site.yaml" in res.output
    assert json.loads((tmp_path / "o" / "partition.json").read_text())["seed"] == 3


def test_cli_bad_output_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(SystemExit) as e:
        main(["data", "prepare-demo", "--out", str(tmp_path / "file.txt")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: output") and "choose another --out" in err and len(err.strip().splitlines()) == 1
