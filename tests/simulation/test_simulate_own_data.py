"""`fltac simulate` on the user's own data: site files (the by-hand layout) or a data folder, no demo sources."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from fltac_secure.cli import app, main
from fltac_secure.data import load_federated_dir, load_sites, synthetic_task, write_task_csv
from fltac_secure.plan import load_plan

PLAN = {
    "federation": "own", "rounds": 2, "roster": ["north", "south", "east"],
    "tasks": [{"name": "topic", "labels": ["x", "y"]}, {"name": "tone", "labels": ["x", "y", "z"]}],
    "model": {"base": "tiny-bert"},
    "clustering": {"sketch_dim": 16, "n_init": 2},
    "training": {"local_steps": 2, "batch_size": 8, "max_seq_length": 12},
}
HOLDS = {"north": ["topic", "tone"], "south": ["topic"], "east": ["tone"]}


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three site folders as an operator makes them by hand (own CSVs, site files with relative paths)."""
    root = tmp_path_factory.mktemp("own")
    (root / "plan.yaml").write_text(yaml.safe_dump(PLAN))
    plan = load_plan(root / "plan.yaml")
    for i, (site, tasks) in enumerate(HOLDS.items()):
        data = {}
        for task in tasks:
            ds = synthetic_task(plan.task(task), 40 + 10 * i, i)
            tr, te = ds.subset(np.arange(0, len(ds) - 8)), ds.subset(np.arange(len(ds) - 8, len(ds)))
            write_task_csv(root / site / "files" / f"{task}-train.csv", tr, plan.task(task))
            write_task_csv(root / site / "files" / f"{task}-test.csv", te, plan.task(task))
            data[task] = {"train": f"files/{task}-train.csv", "test": f"files/{task}-test.csv"}
        (root / site / "site.yaml").write_text(yaml.safe_dump({
            "name": site, "role": "collaborator", "workspace": ".", "aggregator": "tcp://127.0.0.1:5555",
            "certs": {"cert": f"certs/{site}.crt", "key": f"certs/{site}.key", "ca": "certs/ca.crt"}, "data": data}))
    return root


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """The real entry point (errors become one line and an exit code there)."""
    with pytest.raises(SystemExit) as info:
        main(["simulate", *args, "--threads", "1"])
    cap = capsys.readouterr()
    return int(info.value.code or 0), cap.out + cap.err


def test_simulate_with_site_files(own: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sites = [a for s in HOLDS for a in ("--site", str(own / s / "site.yaml"))]
    code, out = _run(capsys, "--plan", str(own / "plan.yaml"), *sites, "--out", str(tmp_path / "sim"))
    assert code == 0, out
    rows = [json.loads(x) for x in (tmp_path / "sim" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1]
    assert sorted(rows[-1]["sites"]) == sorted(HOLDS) and set(rows[-1]["tasks"]) == {"topic", "tone"}
    assert "local test files of 2 site(s)" in out  # no global test folder: said which test set was used


def test_data_folder_gives_the_same_federation_as_the_site_files(own: Path) -> None:
    plan = load_plan(own / "plan.yaml")
    by_files = load_sites(plan, [own / s / "site.yaml" for s in reversed(list(HOLDS))])
    by_dir = load_federated_dir(plan, own)
    assert by_files.sites == by_dir.sites == plan.roster  # roster order whatever the order given
    for s in HOLDS:
        assert list(by_files.train[s]) == list(by_dir.train[s]) == [t for t in ("topic", "tone") if t in HOLDS[s]]
        for t, ds in by_files.train[s].items():
            assert ds.texts == by_dir.train[s][t].texts and np.array_equal(ds.labels, by_dir.train[s][t].labels)
    assert len(by_dir.test["topic"]) == 16 and len(by_dir.test["tone"]) == 16


def test_global_test_folder_is_used_when_present(own: Path, tmp_path: Path) -> None:
    plan = load_plan(own / "plan.yaml")
    for task in plan.tasks:
        write_task_csv(tmp_path / "test" / f"{task.name}.csv", synthetic_task(task, 30, 9), task)
    fed = load_sites(plan, [own / "north" / "site.yaml"], test_dir=tmp_path / "test")
    assert fed.sites == ["north"] and fed.notes == []
    assert {t: len(d) for t, d in fed.test.items()} == {"topic": 30, "tone": 30}


def test_without_data_the_error_names_options_that_exist(own: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run(capsys, "--plan", str(own / "plan.yaml"), "--out", str(own / "never"))
    assert code == 2
    assert "--site" in out and "--data" in out and "Traceback" not in out
    helptext = CliRunner().invoke(app, ["simulate", "--help"]).output
    for option in set(re.findall(r"--[a-z][a-z-]+", out)):
        assert option in helptext, option


@pytest.mark.parametrize("case", ["both", "aggregator", "twice", "missing", "no-test"])
def test_bad_own_data_is_one_clear_line(own: Path, tmp_path: Path, case: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    site = str(own / "north" / "site.yaml")
    agg = tmp_path / "agg.yaml"
    agg.write_text(yaml.safe_dump({"name": "aggregator", "role": "aggregator", "workspace": ".",
                                   "bind": "tcp://127.0.0.1:5555",
                                   "certs": {"cert": "a.crt", "key": "a.key", "ca": "ca.crt", "crl": "crl.pem"}}))
    no_test = tmp_path / "south.yaml"
    raw = yaml.safe_load((own / "south" / "site.yaml").read_text())
    raw["data"]["topic"].pop("test")
    raw["data"]["topic"]["train"] = str(own / "south" / raw["data"]["topic"]["train"])
    no_test.write_text(yaml.safe_dump(raw))
    args = {"both": ["--site", site, "--data", str(own)], "aggregator": ["--site", str(agg)],
            "twice": ["--site", site, "--site", site], "missing": ["--site", str(tmp_path / "nope.yaml")],
            "no-test": ["--site", str(no_test)]}[case]
    want = {"both": "not both", "aggregator": "collaborators' site files", "twice": "give each site once",
            "missing": "does not exist", "no-test": "no test data for task"}[case]
    code, out = _run(capsys, "--plan", str(own / "plan.yaml"), *args, "--out", str(tmp_path / "sim"))
    assert code == 2, out
    assert want in out and "Traceback" not in out


def test_a_site_with_more_tasks_than_clusters_is_reported(own: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    plan = tmp_path / "k1.yaml"
    plan.write_text(yaml.safe_dump({**PLAN, "rounds": 1, "clustering": {**PLAN["clustering"], "k": 1}}))
    sites = [a for s in HOLDS for a in ("--site", str(own / s / "site.yaml"))]
    code, out = _run(capsys, "--plan", str(plan), *sites, "--out", str(tmp_path / "sim"))
    assert code == 0, out
    assert "north (2 slots)" in out and "raise clustering.k to at least 2" in out
    row = json.loads((tmp_path / "sim" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["crowded_sites"] == ["north"]
    assert row["separation"] is None and row["kept_clusters"] is False  # one cluster: no silhouette
