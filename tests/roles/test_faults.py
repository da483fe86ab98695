"""Faults: a site dies mid-round, the aggregator restarts, bad certificates and plans knock."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from roles_harness import Fed, make_fed, restart_after_round_0, start, tiny_plan
from test_federation import assert_same_state, simulate_fltac

from fltac_secure.errors import TransportError
from fltac_secure.federation.demo import enroll, publish_crl


def test_site_dies_mid_round_then_rejoins(tmp_path: Path) -> None:
    from collaborator.service import Faults, SimulatedCrash

    fed = make_fed(tmp_path / "fed", tiny_plan(rounds=4, round_s=5.0))
    agg_obj = fed.aggregator()
    restarted: list[Any] = []

    def on_round(report: Any) -> None:
        if report.round == 1:  # the round site3 died in is complete: bring it back
            col = fed.collaborator("site3")
            restarted.append(start(col))
            assert col.joined.wait(30), "restarted site3 never joined"

    agg_obj.on_round = on_round
    agg = start(agg_obj)
    cols = {s: start(fed.collaborator(s)) for s in ("site1", "site2")}
    dying = start(fed.collaborator("site3", faults=Faults(crash_before=("SKETCHES", 1))))
    agg.join(180)
    assert not agg.error, agg.error
    assert dying.error and isinstance(dying.error[0], SimulatedCrash)
    hist = {row["round"]: row for row in agg_obj.history}
    assert hist[0]["updated"] == ["site1", "site2", "site3"]
    assert hist[1]["updated"] == ["site1", "site2"]  # completed on quorum without site3
    assert hist[1]["missed"] == {"site3": "no SKETCHES in time"}
    assert "site3" in hist[3]["updated"]  # back in a later round
    for run in [*cols.values(), *restarted]:
        run.join(60)
        assert not run.error, run.error
    assert (fed.layout.sites["site3"] / "out" / "metrics.jsonl").is_file()


def test_aggregator_restart_resumes_and_matches(tmp_path: Path) -> None:
    fed = make_fed(tmp_path / "fed", tiny_plan(rounds=2))
    second_obj, state = restart_after_round_0(fed)
    want, labels = simulate_fltac(fed.plan, fed.layout.root)
    assert [row["clusters"] for row in second_obj.history] == labels
    assert_same_state(state, want)


def test_aggregator_restart_over_a_damaged_checkpoint_resumes_from_the_previous_and_matches(tmp_path: Path) -> None:
    """Issue 10: one flipped data byte in the newest checkpoint; a temp file left by a kill.  Nothing is lost."""
    from aggregator.service import Faults, SimulatedCrash

    fed = make_fed(tmp_path / "fed", tiny_plan(rounds=3))
    cols = {s: start(fed.collaborator(s)) for s in fed.layout.sites}
    first = start(fed.aggregator(faults=Faults(crash_after_round=1)))
    first.join(180)
    assert first.error and isinstance(first.error[0], SimulatedCrash)
    state_dir = fed.layout.aggregator / "state"
    newest = state_dir / "server-000002.safetensors"
    data = bytearray(newest.read_bytes())
    data[-1] ^= 0x01
    newest.write_bytes(bytes(data))
    stale = state_dir / ".checkpoint.json.k1ll3d_0.tmp"
    stale.write_text("left by a writer killed before its rename")
    second_obj = fed.aggregator()
    second = start(second_obj)
    state = second.join(240)
    assert not second.error, second.error
    assert second_obj.store.loaded_from == state_dir / "checkpoint.prev.json"
    assert not stale.exists()
    assert [row["round"] for row in second_obj.history] == [0, 1, 2]  # round 1 ran again
    for run in cols.values():
        run.join(60)
        assert not run.error, run.error
    want, labels = simulate_fltac(fed.plan, fed.layout.root)
    assert [row["clusters"] for row in second_obj.history] == labels
    assert_same_state(state, want)


def _intruder(fed: Fed, tmp: Path) -> Any:
    """A site enrolled with the federation's CA but absent from the roster."""
    from collaborator.service import Collaborator
    from fltac_secure.federation.console import EventLog
    from fltac_secure.plan import load_site

    folder = tmp / "intruder"
    shutil.copytree(fed.layout.sites["site1"] / "data", folder / "data")
    text = (fed.layout.sites["site1"] / "site.yaml").read_text().replace("site1", "intruder")
    (folder / "site.yaml").write_text(text)
    enroll("intruder", "collaborator", folder, fed.layout.ca_dir)
    shutil.copyfile(fed.layout.sites["site1"] / "certs" / "crl.pem", folder / "certs" / "crl.pem")
    return Collaborator(fed.plan, load_site(folder / "site.yaml"), log=EventLog("intruder", quiet=True))


def _copy_of(fed: Fed, name: str, tmp: Path, plan: Any) -> Any:
    """The same site (same certificate) from a copy of its folder, run under ``plan``."""
    from collaborator.service import Collaborator
    from fltac_secure.federation.console import EventLog
    from fltac_secure.plan import load_site

    folder = tmp / f"{name}-copy"
    shutil.copytree(fed.layout.sites[name], folder)
    return Collaborator(plan, load_site(folder / "site.yaml", plan), log=EventLog(name, quiet=True))


def test_bad_sites_are_refused_while_others_carry_on(tmp_path: Path) -> None:
    from fltac_secure.pki import revoke

    fed = make_fed(tmp_path / "fed", tiny_plan(rounds=1))
    revoke("site3", fed.layout.ca_dir)
    publish_crl(fed.layout)
    agg_obj = fed.aggregator(join_window=4.0)
    agg = start(agg_obj)
    other_plan = tiny_plan(rounds=7)
    refusals = {
        "revoked": (fed.collaborator("site3"), "revoked"),
        "not in roster": (_intruder(fed, tmp_path), "not in this plan's roster"),
        "another plan": (_copy_of(fed, "site2", tmp_path, other_plan), "use the same plan.yaml"),
    }
    for what, (col, text) in refusals.items():
        with pytest.raises(TransportError) as err:
            col.run()
        assert text in str(err.value), (what, str(err.value))
    good = [start(fed.collaborator(s)) for s in ("site1", "site2")]
    agg.join(120)
    assert not agg.error, agg.error
    assert agg_obj.history[0]["updated"] == ["site1", "site2"]
    for run in good:
        run.join(60)
        assert not run.error, run.error
