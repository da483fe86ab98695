"""`fltac demo` end to end with the tiny model: real processes, real TLS, the table and the audit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

LAUNCH = "import sys; from fltac_secure.cli import main; main(sys.argv[1:])"


def test_demo_two_sites_one_round(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    res = subprocess.run(
        [sys.executable, "-c", LAUNCH, "demo", "--sites", "2", "--rounds", "1", "--workdir", str(work),
         "--base", "tiny-bert"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert "Final global adapters on the held-out test sets" in out
    for task in ("news", "spam", "sentiment", "langid"):
        assert task in out
    assert "Wire traffic by kind" in out and "full_finetuning" in out
    assert "rounds taken part in" in out and "up to date" in out  # per site: rounds, stale adapters flagged
    assert "secure aggregation on" in out and "cluster-round(s) securely summed" in out
    assert "never held a site's adapter" in out and "SA_MASKED" in out
    # separate processes left their own workspaces, ledgers and adapters
    assert (work / "aggregator" / "state" / "checkpoint.json").is_file()
    assert (work / "aggregator" / "ledger.jsonl").is_file()
    for site in ("site1", "site2"):
        assert (work / site / "ledger.jsonl").is_file()
        state = json.loads((work / site / "state" / "collaborator.json").read_text())
        assert state["finished"] is True
    audit = subprocess.run([sys.executable, "-c", LAUNCH, "audit", "--workspace", str(work / "aggregator"),
                            "--by", "site"], capture_output=True, text=True, env=env, timeout=120)
    assert audit.returncode == 0, audit.stderr
    assert "site1" in audit.stdout and "site2" in audit.stdout


def test_demo_refuses_a_non_empty_workdir(tmp_path: Path) -> None:
    (tmp_path / "x").write_text("keep me")
    res = subprocess.run([sys.executable, "-c", LAUNCH, "demo", "--workdir", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "not empty" in res.stderr


@pytest.mark.parametrize("args", [["--sites", "0"], ["--rounds", "0"]])
def test_demo_bad_options(args: list[str]) -> None:
    res = subprocess.run([sys.executable, "-c", LAUNCH, "demo", *args], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
