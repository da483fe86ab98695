"""The collaborator's DP wiring: setup builds the site's one DPTrainer on the workspace's persistent
ledger (a restart resumes its spending), and a trainer on any other ledger - in memory above all - is
refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from collaborator.service import Collaborator
from fltac_secure.errors import PrivacyError
from fltac_secure.federation.console import EventLog
from fltac_secure.federation.rounds import client_round
from fltac_secure.learning.adapters import initial_vector
from fltac_secure.plan import Plan, Site
from fltac_secure.privacy.dp import DPTrainer
from fltac_secure.privacy.ledger import PrivacyLedger, ledger_path


def dp_site(tmp_path: Path) -> tuple[Plan, Site]:
    plan = Plan.model_validate({
        "federation": "dptest", "rounds": 2, "roster": ["site1"],
        "tasks": [{"name": "alpha", "labels": ["a0", "a1"]}],
        "model": {"base": "tiny-bert", "lora": {"rank": 1}},
        "training": {"local_steps": 2, "batch_size": 8, "max_seq_length": 12},
        "privacy": {"dp": True, "noise_multiplier": 1.0, "delta": 1e-3, "local_steps": 2, "max_batch_size": 8},
    })  # fmt: skip
    rows = "\n".join(f"word{i} number {i},a{i % 2}" for i in range(40))
    (tmp_path / "alpha.csv").write_text("text,label\n" + rows + "\n")
    site = Site.model_validate({
        "name": "site1", "role": "collaborator", "workspace": str(tmp_path / "ws"), "aggregator": "tcp://127.0.0.1:1",
        "certs": {"cert": "c.crt", "key": "c.key", "ca": "ca.crt"},
        "data": {"alpha": {"train": str(tmp_path / "alpha.csv")}},
    })  # fmt: skip
    return plan, site


def test_setup_trains_through_the_persistent_ledger_and_a_restart_resumes_it(tmp_path: Path) -> None:
    plan, site = dp_site(tmp_path)
    col = Collaborator(plan, site, log=EventLog("site1", quiet=True))
    col.setup()
    assert col.dp is not None and col.dp.ledger.persistent
    assert col.dp.ledger.path == ledger_path(site.workspace) and col.dp.model is col.ws.model
    starts = {s.key: initial_vector(plan, 0) for s in col.ws.slots}
    (res,) = client_round(col.ws.model, site.name, col.ws.slots, starts, 0, plan, dp=col.dp)
    assert res.stats["epsilon"] > 0 and ledger_path(site.workspace).is_file()
    again = Collaborator(plan, site, log=EventLog("site1", quiet=True))  # the site restarted
    again.setup()
    assert again.dp is not None and again.dp.epsilon("alpha") == res.stats["epsilon"]


def test_a_trainer_on_an_in_memory_or_foreign_ledger_is_refused(tmp_path: Path) -> None:
    plan, site = dp_site(tmp_path)
    col = Collaborator(plan, site, log=EventLog("site1", quiet=True))
    col.setup()
    p = plan.privacy
    memory = DPTrainer(col.ws.model, plan, ledger=PrivacyLedger.in_memory(delta=p.delta, accountant=p.accountant))
    with pytest.raises(PrivacyError, match="privacy ledger is in memory only"):
        col.use_dp(memory)
    foreign = PrivacyLedger.open(tmp_path / "other", plan_hash=col.hash, delta=p.delta, accountant=p.accountant)
    with pytest.raises(PrivacyError, match="not this site's"):
        col.use_dp(DPTrainer(col.ws.model, plan, ledger=foreign))
    assert col.dp is not None and col.dp.ledger.path == ledger_path(site.workspace)  # unchanged
