"""`fltac simulate` end to end on a tiny plan (tiny BERT, generated tasks, one round)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from fltac_secure.cli import app

PLAN = {
    "federation": "cli-tiny", "rounds": 3, "roster": ["s1", "s2", "s3"],
    "tasks": [{"name": "a", "labels": ["x", "y"], "demo_source": "synthetic"},
              {"name": "b", "labels": ["x", "y", "z"], "demo_source": "synthetic"}],
    "model": {"base": "tiny-bert"},
    "training": {"local_steps": 2, "max_seq_length": 12},
    "partition": {"alpha": 5.0, "max_examples_per_task": 90},
}


def test_simulate_cli_writes_metrics_plots_and_adapters(tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump(PLAN))
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["simulate", "--plan", str(plan), "--out", str(out), "--rounds", "1",
                                   "--threads", "1"])
    assert res.exit_code == 0, res.output
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and "ari" in json.loads(lines[0])
    assert (out / "clusters.png").is_file() and (out / "adapters" / "a" / "adapter_config.json").is_file()
    assert "mean" in res.output


def test_simulate_cli_rejects_unknown_method(tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump(PLAN))
    res = CliRunner().invoke(app, ["simulate", "--plan", str(plan), "--method", "nope", "--out", str(tmp_path)])
    assert res.exit_code != 0
    assert "unknown --method" in str(res.exception) + res.output
