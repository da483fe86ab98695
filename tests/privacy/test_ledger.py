"""The privacy ledger: atomic JSON in the workspace, validated on load, never silently reset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fltac_secure.errors import PrivacyError
from fltac_secure.privacy.accounting import SlotAccountant
from fltac_secure.privacy.ledger import PrivacyLedger, RoundEntry, ledger_path, load_ledger

KW = {"plan_hash": "a" * 64, "delta": 1e-5, "accountant": "rdp"}


def charged(tmp_path: Path, rounds: int = 2) -> PrivacyLedger:
    led = PrivacyLedger.open(tmp_path, **KW)
    rec = led.slot("news", data_size=500, target_epsilon=8.0)
    acc = rec.accountant
    for r in range(rounds):
        acc = SlotAccountant("rdp", acc.history)
        acc.step(1.0, 16 / 500, 10)
        led.charge("news", RoundEntry(r, 10, 16 / 500, 1.0, 1.0, acc.epsilon(1e-5)), acc)
    return led


def test_reload_gives_the_same_spending(tmp_path: Path) -> None:
    led = charged(tmp_path)
    assert ledger_path(tmp_path).is_file()
    assert [p.name for p in ledger_path(tmp_path).parent.iterdir()] == ["privacy.json"]  # no temp files left
    back = PrivacyLedger.open(tmp_path, **KW)
    assert back.to_json() == led.to_json()
    rec = back.slots["news"]
    assert rec.accountant.steps == 20 and rec.epsilon == led.slots["news"].epsilon > 0
    assert load_ledger(tmp_path).to_json() == led.to_json()


@pytest.mark.parametrize(("change", "match"), [
    ({"plan_hash": "b" * 64}, "not this plan"),
    ({"delta": 1e-6}, "privacy.delta"),
    ({"accountant": "prv"}, "privacy.accountant"),
])
def test_a_ledger_from_other_settings_is_refused(tmp_path: Path, change: dict, match: str) -> None:
    charged(tmp_path)
    with pytest.raises(PrivacyError, match=match):
        PrivacyLedger.open(tmp_path, **{**KW, **change})


def test_a_changed_data_size_or_budget_is_refused(tmp_path: Path) -> None:
    charged(tmp_path)
    led = PrivacyLedger.open(tmp_path, **KW)
    with pytest.raises(PrivacyError, match="500 examples, now it has 501"):
        led.slot("news", data_size=501, target_epsilon=8.0)
    with pytest.raises(PrivacyError, match="privacy.target_epsilon"):
        led.slot("news", data_size=500, target_epsilon=9.0)


def test_an_edited_or_corrupt_ledger_is_refused(tmp_path: Path) -> None:
    charged(tmp_path)
    path = ledger_path(tmp_path)
    data = json.loads(path.read_text())
    data["slots"]["news"]["rounds"][-1]["epsilon"] /= 2  # someone "refunds" half the budget
    path.write_text(json.dumps(data))
    with pytest.raises(PrivacyError, match="edited or corrupted"):
        PrivacyLedger.open(tmp_path, **KW)
    data["slots"]["news"]["accountant"]["history"] = []  # or resets the accountant
    path.write_text(json.dumps(data))
    with pytest.raises(PrivacyError, match="inconsistent"):
        PrivacyLedger.open(tmp_path, **KW)
    path.write_text("{not json")
    with pytest.raises(PrivacyError, match="cannot read"):
        PrivacyLedger.open(tmp_path, **KW)
    path.write_text(json.dumps({"format": "other"}))
    with pytest.raises(PrivacyError, match="not a fltac-privacy-ledger"):
        PrivacyLedger.open(tmp_path, **KW)


def test_missing_ledger_for_a_report_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PrivacyError, match="no privacy ledger"):
        load_ledger(tmp_path)


def test_a_stop_is_recorded(tmp_path: Path) -> None:
    led = charged(tmp_path)
    led.stop("news", round=2, epsilon=1.0, next_epsilon=9.0)
    back = PrivacyLedger.open(tmp_path, **KW)
    assert back.slots["news"].stopped == {"round": 2, "epsilon": 1.0, "next_epsilon": 9.0, "target_epsilon": 8.0}


def test_an_in_memory_ledger_says_it_is_not_persistent_and_writes_nothing(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    mem = PrivacyLedger.in_memory(delta=1e-5, accountant="rdp")
    assert not mem.persistent and mem.path is None
    rec = mem.slot("news", data_size=500, target_epsilon=None)
    acc = SlotAccountant("rdp", rec.accountant.history)
    acc.step(1.0, 16 / 500, 10)
    mem.charge("news", RoundEntry(0, 10, 16 / 500, 1.0, 1.0, acc.epsilon(1e-5)), acc)
    assert mem.epsilons() == {"news": acc.epsilon(1e-5)}
    assert list(tmp_path.iterdir()) == []
    assert PrivacyLedger.open(tmp_path / "ws", **KW).persistent
