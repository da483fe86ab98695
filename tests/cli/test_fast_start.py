"""Commands that need no model start without importing torch, transformers, Opacus and friends.

Each command runs in a fresh interpreter (what an operator's shell does), one
after the other in one process, and the process then reports which heavy
modules it imported.  No wall-clock assertion: what makes a command slow is
the imports, and those are what is checked.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

from fltac_secure.federation.ledger import Ledger
from fltac_secure.federation.sizes import record_model_facts
from fltac_secure.plan import DEMO_PLAN, load_plan
from fltac_secure.transport.events import WireEvent

HEAVY = ("torch", "transformers", "opacus", "matplotlib", "datasets", "sklearn", "scipy", "peft", "pandas")

SCRIPT = textwrap.dedent("""
    import json, re, sys
    from fltac_secure.cli import _main

    def run(*args):
        try:
            _main([str(a) for a in args])
            return 0
        except SystemExit as e:
            return int(e.code or 0)

    codes = {name: run(*args) for name, args in json.loads(sys.argv[1])}
    heavy = sorted(m for m in json.loads(sys.argv[2]) if m in sys.modules)
    print("RESULT " + json.dumps({"codes": codes, "heavy": heavy}))
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(cmds: list, script: str = SCRIPT) -> tuple[str, dict]:
    """Run ``cmds`` [(name, args)] in one fresh interpreter; its stdout and {codes, heavy}."""
    arg = json.dumps([[n, [str(a) for a in c]] for n, c in cmds])
    proc = subprocess.run([sys.executable, "-c", script, arg, json.dumps(HEAVY)],
                          capture_output=True, text=True, timeout=120)
    assert "RESULT " in proc.stdout, proc.stderr[-3000:]
    return proc.stdout, json.loads(proc.stdout.split("RESULT ")[1])


def _audit_workspace(root: Path) -> Path:
    """A workspace as a role leaves it: plan.yaml, model_facts.json and a ledger."""
    plan = load_plan(DEMO_PLAN)
    plan = plan.model_copy(update={"model": plan.model.model_copy(update={"base": "tiny-bert"})})
    ws = root / "ws"
    ws.mkdir()
    (ws / "plan.yaml").write_text(yaml.safe_dump(plan.model_dump(mode="json")))
    record_model_facts(ws, plan)
    led = Ledger(ws / "ledger.jsonl", "aggregator")
    led.record(WireEvent(time=1.0, peer="site1", direction="sent", kind="ROUND_START", round=0, msg_id=1,
                         elements=10, payload_bytes=40, wire_bytes=50))
    return ws


def test_model_free_commands_import_no_heavy_module(tmp_path: Path) -> None:
    ws = _audit_workspace(tmp_path)
    ca, site = tmp_path / "ca", tmp_path / "site1"
    (tmp_path / "site.yaml").write_text(yaml.safe_dump({
        "name": "site1", "role": "collaborator", "workspace": "ws1", "aggregator": f"tcp://127.0.0.1:{_free_port()}",
        "certs": {"cert": "site1/site1.crt", "key": "site1/site1.key", "ca": "site1/ca.crt"},
        "data": {"news": {"train": "news.csv"}},
    }))
    cmds = [
        ("plan hash", ["plan", "hash", DEMO_PLAN]),
        ("plan show", ["plan", "show", DEMO_PLAN]),
        ("plan validate", ["plan", "validate", DEMO_PLAN]),
        ("site init", ["site", "init", "--role", "aggregator", "--name", "agg", "--out", tmp_path / "agg.yaml"]),
        ("ca init", ["ca", "init", "--dir", ca]),
        ("certs request", ["certs", "request", "--role", "collaborator", "--name", "site1", "--out", site]),
    ]
    out, first = _run(cmds)
    fingerprint = out.split("fingerprint: ")[1].split()[0]
    cmds = [
        ("sign", ["ca", "sign", site / "site1.csr", "--ca-dir", ca, "--fingerprint", fingerprint]),
        ("certs show", ["certs", "show", site / "site1.crt"]),
        ("ca list", ["ca", "list", "--ca-dir", ca]),
        ("audit", ["audit", "--workspace", ws]),
        ("audit csv", ["audit", "--workspace", ws, "--csv", "--by", "kind"]),
        ("ping", ["collaborator", "ping", "--plan", DEMO_PLAN, "--site", tmp_path / "site.yaml", "--timeout", "1"]),
    ]
    _, second = _run(cmds)
    codes = {**first["codes"], **second["codes"]}
    assert codes.pop("ping") == 1  # nobody listens there: a clear refusal, not a crash
    assert all(c == 0 for c in codes.values()), codes
    assert first["heavy"] == [] and second["heavy"] == [], (first, second)


def test_the_check_sees_a_heavy_import() -> None:
    """The probe itself works: an interpreter that did import torch is reported as such."""
    assert _run([("help", ["--help"])])[1] == {"codes": {"help": 0}, "heavy": []}
    probe = SCRIPT.replace("codes = {", "import torch\ncodes = {")
    assert "torch" in _run([], probe)[1]["heavy"]
