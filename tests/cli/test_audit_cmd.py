"""`fltac audit`: one vocabulary in table, CSV and JSON; a wrong folder is named as such."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cli_run import fltac

from fltac_secure.federation.ledger import Ledger
from fltac_secure.federation.sizes import record_model_facts
from fltac_secure.plan import DEMO_PLAN, load_plan
from fltac_secure.transport.events import WireEvent


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    plan = load_plan(DEMO_PLAN)
    plan = plan.model_copy(update={"model": plan.model.model_copy(update={"base": "tiny-bert"})})
    ws = tmp_path_factory.mktemp("ws")
    (ws / "plan.yaml").write_text(yaml.safe_dump(plan.model_dump(mode="json")))
    record_model_facts(ws, plan)
    led = Ledger(ws / "ledger.jsonl", "aggregator")
    for r, kind, n in ((0, "ROUND_START", 100), (0, "PING", 0), (1, "UPDATE", 50), (2, "FINAL", 100)):
        led.record(WireEvent(time=1.0, peer="site1", direction="sent", kind=kind, round=r, msg_id=r,
                             elements=n, payload_bytes=4 * n, wire_bytes=4 * n + 10))
    return ws


def test_csv_json_and_table_use_the_same_column_names(capsys: pytest.CaptureFixture[str], workspace: Path) -> None:
    code, out, _ = fltac(capsys, "audit", "--workspace", workspace, "--csv")
    assert code == 0
    header = out.splitlines()[0].split(",")
    assert header == ["round", "messages", "parameters", "payload_bytes", "wire_bytes"]
    assert [line.split(",")[0] for line in out.splitlines()[1:]] == ["0", "1", "final", "session", "total"]
    code, out, _ = fltac(capsys, "audit", "--workspace", workspace, "--json")
    data = json.loads(out)
    assert list(data["total"]) == header[1:] and data["total"]["parameters"] == 250
    code, out, _ = fltac(capsys, "audit", "--workspace", workspace)
    heading = next(line for line in out.splitlines() if "messages" in line)
    for name in header:
        assert name.replace("_", " ") in heading
    assert "elements" not in out


@pytest.mark.parametrize("case", ["missing", "file", "empty"])
def test_not_a_workspace_is_named(capsys: pytest.CaptureFixture[str], tmp_path: Path, case: str) -> None:
    target = tmp_path / "nowhere"
    if case == "file":
        target.write_text("x")
    elif case == "empty":
        target.mkdir()
    code, out, err = fltac(capsys, "audit", "--workspace", target)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert str(target) in err and "plan.yaml" not in err
    expected = {"missing": "does not exist", "file": "is not a folder", "empty": "holds no ledger.jsonl"}[case]
    assert expected in err


def test_workspace_without_plan_says_give_plan(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                               workspace: Path) -> None:
    (tmp_path / "ledger.jsonl").write_bytes((workspace / "ledger.jsonl").read_bytes())
    code, _, err = fltac(capsys, "audit", "--workspace", tmp_path)
    assert code == 2 and "--plan" in err
    code, out, err = fltac(capsys, "audit", "--workspace", tmp_path, "--plan", workspace / "plan.yaml", "--json")
    assert code == 0, err
