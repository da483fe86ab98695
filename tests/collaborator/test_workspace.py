"""The collaborator's workspace: stale temp files in state/ are removed at start, nothing else."""

from __future__ import annotations

from pathlib import Path

from collaborator.workspace import SiteWorkspace
from fltac_secure.plan import Plan, Site, plan_hash


def test_stale_temp_files_in_state_are_removed_and_nothing_else(tmp_path: Path) -> None:
    plan = Plan.model_validate({
        "federation": "wstest", "rounds": 1, "roster": ["site1"],
        "tasks": [{"name": "alpha", "labels": ["a0", "a1"]}],
        "model": {"base": "tiny-bert"},
    })  # fmt: skip
    site = Site.model_validate({
        "name": "site1", "role": "collaborator", "workspace": str(tmp_path), "aggregator": "tcp://127.0.0.1:1",
        "certs": {"cert": "c.crt", "key": "c.key", "ca": "ca.crt"}, "data": {"alpha": {"train": "a.csv"}},
    })  # fmt: skip
    ws = SiteWorkspace(plan, site, plan_hash(plan))
    assert ws.remove_stale_temps() == 0  # no state/ yet
    state = tmp_path / "state"
    state.mkdir()
    stale = [".collaborator.json.a1b2c3d4.tmp", ".round.safetensors.zz_99xyz.tmp", ".privacy.json.q0w9e8r7.tmp"]
    kept = ["collaborator.json", "round.safetensors", "privacy.json", "scratch.tmp", ".privacy.json.tmp"]
    for name in stale + kept:
        (state / name).write_text("x")
    (tmp_path / ".plan.yaml.a1b2c3d4.tmp").write_text("x")  # outside state/: not this sweep's business
    assert ws.remove_stale_temps() == 3
    assert sorted(p.name for p in state.iterdir()) == sorted(kept)
    assert (tmp_path / ".plan.yaml.a1b2c3d4.tmp").exists()
