"""`fltac privacy report` prints what the ledger holds (table and JSON), and fails clearly without one."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from fltac_secure.cli import app
from fltac_secure.privacy.accounting import SlotAccountant
from fltac_secure.privacy.ledger import PrivacyLedger, RoundEntry


def make_ledger(ws: Path) -> PrivacyLedger:
    led = PrivacyLedger.open(ws, plan_hash="c" * 64, delta=1e-5, accountant="rdp")
    for task, target in (("news", 8.0), ("spam", None)):
        acc = led.slot(task, data_size=400, target_epsilon=target).accountant
        for r in range(2):
            acc = SlotAccountant("rdp", acc.history)
            acc.step(1.3, 0.04, 15)
            led.charge(task, RoundEntry(r, 15, 0.04, 1.3, 1.0, acc.epsilon(1e-5)), acc)
    led.stop("news", round=2, epsilon=led.slots["news"].epsilon, next_epsilon=9.5)
    return led


def test_report_json_is_the_ledger(tmp_path: Path) -> None:
    led = make_ledger(tmp_path)
    res = CliRunner().invoke(app, ["privacy", "report", "--workspace", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    news = out["slots"]["news"]
    assert news["epsilon"] == led.slots["news"].epsilon
    assert news["budget_left"] == 8.0 - news["epsilon"] and news["status"] == "stopped on budget"
    assert [e["round"] for e in news["rounds"]] == [0, 1] and news["steps"] == 30
    assert out["slots"]["spam"]["budget_left"] is None and out["delta"] == 1e-5


def test_report_table_shows_every_round_and_the_budget(tmp_path: Path) -> None:
    led = make_ledger(tmp_path)
    res = CliRunner().invoke(app, ["privacy", "report", "-w", str(tmp_path)], terminal_width=200)
    assert res.exit_code == 0, res.output
    for task in ("news", "spam"):
        for e in led.slots[task].rounds:
            assert f"{e.epsilon:.4g}" in res.output
    assert f"{8.0 - led.slots['news'].epsilon:.4g}" in res.output
    assert "stopped on budget" in res.output and "active" in res.output


def test_report_without_a_ledger_fails_clearly(tmp_path: Path) -> None:
    from fltac_secure.cli import main
    import pytest

    with pytest.raises(SystemExit) as exc:
        main(["privacy", "report", "--workspace", str(tmp_path)])
    assert exc.value.code == 2
