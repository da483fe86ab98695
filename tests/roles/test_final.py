"""The end of a federation with faults (issue 10): nothing lost, nobody waited for forever.

- the aggregator killed after FINAL went out resumes in the final phase (not in a round), writes
  ``out/`` from its checkpoint, accepts the DONEs, and its adapters equal the uninterrupted ones;
- confirmations are durable: a restart sends FINAL only to sites that have not confirmed, waits a
  bounded time for them, and lists who never confirmed; a finished site restarted returns at once;
- sites missing at the start, mid-run or at the end: the run completes on quorum, and ``out/`` says
  per round who missed it and why, and per site which rounds it took part in and whether its
  adapters are stale.  A late site catches up from the round in progress.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from roles_harness import Fed, make_fed, start, tiny_plan
from test_federation import assert_same_state, simulate_fltac

from fltac_secure.federation.console import EventLog

SITES = ["site1", "site2", "site3"]


class Lines(EventLog):
    """An event log that keeps its lines (for assertions) instead of printing them."""

    def __init__(self, site: str) -> None:
        super().__init__(site, quiet=True)
        self.lines: list[str] = []

    def _line(self, text: str, style: str | None) -> None:
        self.lines.append(text)

    def has(self, text: str) -> bool:
        return any(text in line for line in self.lines)


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _final_record(fed: Fed) -> dict[str, Any]:
    return json.loads((fed.layout.aggregator / "state" / "final.json").read_text())


def cluster_adapters(out: Path) -> dict[str, dict[str, np.ndarray]]:
    """Every ``out/cluster_*/adapter_model.safetensors``, by folder name."""
    from safetensors.numpy import load_file

    return {p.name: load_file(p / "adapter_model.safetensors") for p in sorted(out.glob("cluster_*"))}


def assert_same_adapters(got: dict[str, dict[str, np.ndarray]], want: dict[str, dict[str, np.ndarray]]) -> None:
    assert sorted(got) == sorted(want) and want
    for name, tensors in want.items():
        assert sorted(got[name]) == sorted(tensors), name
        for key, value in tensors.items():
            np.testing.assert_allclose(got[name][key], value, atol=1e-5, err_msg=f"{name}/{key}")


def reference_adapters(fed: Fed, tmp: Path) -> tuple[Any, dict[str, dict[str, np.ndarray]]]:
    """The uninterrupted run's final state (the simulator's: loopback equals it) and its exported adapters."""
    from aggregator.outputs import export_clusters

    state, _ = simulate_fltac(fed.plan, fed.layout.root)
    export_clusters(tmp, fed.plan, state, {})
    return state, cluster_adapters(tmp / "out")


def _final_rows(fed: Fed, site: str) -> list[dict[str, Any]]:
    return [r for r in _jsonl(fed.layout.sites[site] / "out" / "metrics.jsonl") if r["kind"] == "final"]


def test_aggregator_killed_after_final_resumes_in_the_final_phase(tmp_path: Path) -> None:
    from aggregator.service import Faults, SimulatedCrash

    fed = make_fed(tmp_path / "fed", tiny_plan(rounds=2))
    cols = {s: start(fed.collaborator(s)) for s in fed.layout.sites}
    first = start(fed.aggregator(faults=Faults(crash_after_final=1)))
    first.join(120)
    assert first.error and isinstance(first.error[0], SimulatedCrash), first.error
    out = fed.layout.aggregator / "out"
    for folder in out.glob("cluster_*"):  # lose what the first process wrote: the restart writes it again
        shutil.rmtree(folder)
    (out / "clusters.json").unlink()

    log = Lines("aggregator")
    second = start(fed.aggregator(log=log))
    state = second.join(120)
    assert not second.error, second.error
    for name, run in cols.items():
        run.join(60)
        assert not run.error, (name, run.error)
    assert not log.has("waiting for sites to join") and not log.has("ROUND_START"), log.lines  # no round again
    want_state, want_adapters = reference_adapters(fed, tmp_path / "ref")
    assert_same_state(state, want_state)
    assert_same_adapters(cluster_adapters(out), want_adapters)
    assert json.loads((out / "clusters.json").read_text())["round"] == fed.plan.rounds
    record = _final_record(fed)
    assert record["confirmed"] == SITES and record["never_confirmed"] == [], record
    for site in SITES:  # every site handled FINAL exactly once
        tasks = fed.site(site).data
        assert sorted(r["task"] for r in _final_rows(fed, site)) == sorted(tasks), site


def test_confirmations_are_durable_and_the_wait_is_bounded(tmp_path: Path) -> None:
    from collaborator.service import Collaborator

    fed = make_fed(tmp_path / "fed", tiny_plan(rounds=1))
    cols = {s: start(fed.collaborator(s)) for s in fed.layout.sites}
    agg = start(fed.aggregator())
    agg.join(120)
    assert not agg.error, agg.error
    for run in cols.values():
        run.join(60)
    assert _final_record(fed)["confirmed"] == SITES
    ledger = fed.layout.aggregator / "ledger.jsonl"
    finals = sum(r["kind"] == "FINAL" and r["direction"] == "sent" for r in _jsonl(ledger))

    # started again after a complete run: outputs written again, nothing sent, no wait for anyone
    log = Lines("aggregator")
    again = start(fed.aggregator(log=log, join_window=600.0))
    assert again.join(120).round == fed.plan.rounds and not again.error, again.error
    assert log.has("global adapters and metrics written") and not log.has("waiting up to"), log.lines
    assert sum(r["kind"] == "FINAL" and r["direction"] == "sent" for r in _jsonl(ledger)) == finals

    # site2's confirmation lost: the aggregator waits the join window for it (its process is over), then lists it
    record = _final_record(fed)
    record["confirmed"] = ["site1", "site3"]
    (fed.layout.aggregator / "state" / "final.json").write_text(json.dumps(record))
    log = Lines("aggregator")
    third = start(fed.aggregator(log=log, join_window=1.0))
    third.join(120)
    assert not third.error, third.error
    assert _final_record(fed)["never_confirmed"] == ["site2"]
    assert log.has("never confirmed the final adapters: site2"), log.lines

    # a finished site started again returns at once and connects to nobody
    site2 = fed.site("site2")
    site_ledger = Path(site2.workspace) / "ledger.jsonl"
    before = site_ledger.read_text()
    assert Collaborator(fed.plan, site2, log=EventLog("site2", quiet=True)).run() == {}
    assert site_ledger.read_text() == before


def test_missing_sites_are_reported_and_a_late_site_catches_up(tmp_path: Path) -> None:
    """site3 misses the join window (joins after round 0); site2 dies before its last UPDATE."""
    from collaborator.service import Faults, SimulatedCrash

    timeouts = {"handshake_s": 5, "round_s": 10, "idle_s": 30, "join_s": 2}
    fed = make_fed(tmp_path / "fed", tiny_plan(rounds=3, timeouts=timeouts))
    late: list[Any] = []
    log = Lines("aggregator")
    agg_obj = fed.aggregator(join_window=None, log=log)  # the plan's join_s

    def on_round(report: Any) -> None:
        if report.round == 0:
            col = fed.collaborator("site3")
            late.append(start(col))
            assert col.joined.wait(30), "site3 never joined"

    agg_obj.on_round = on_round
    site1 = start(fed.collaborator("site1"))
    dying = start(fed.collaborator("site2", faults=Faults(crash_before=("UPDATE", 2))))
    agg = start(agg_obj)
    agg.join(180)
    assert not agg.error, agg.error
    assert dying.error and isinstance(dying.error[0], SimulatedCrash), dying.error
    for run in (site1, *late):
        run.join(60)
        assert not run.error, run.error

    rows = {r["round"]: r for r in _jsonl(fed.layout.aggregator / "out" / "metrics.jsonl")}
    assert rows[0]["missed"] == {"site3": "not connected"}, rows[0]
    assert rows[1]["missed"] == {} and rows[1]["updated"] == SITES, rows[1]
    assert rows[2]["missed"] == {"site2": "no UPDATE in time"}, rows[2]
    assert log.has("round 0: site3 did not take part (not connected)")
    assert log.has("round 2: site2 did not take part (no UPDATE in time)")

    clusters = json.loads((fed.layout.aggregator / "out" / "clusters.json").read_text())
    sites = clusters["sites"]
    assert (sites["site1"]["rounds"], sites["site1"]["stale"]) == ([0, 1, 2], False)
    assert (sites["site2"]["rounds"], sites["site2"]["stale"]) == ([0, 1], True)
    assert (sites["site3"]["rounds"], sites["site3"]["stale"]) == ([1, 2], False)
    assert not any(k.startswith("site2/") for k in clusters["clusters"])  # stale slots are in no final cluster
    record = _final_record(fed)
    assert record["confirmed"] == ["site1", "site3"] and record["never_confirmed"] == ["site2"], record

    # the late site started from the round in progress: no replay of round 0
    site3 = fed.layout.sites["site3"]
    starts = [r["round"] for r in _jsonl(site3 / "ledger.jsonl") if r["kind"] == "ROUND_START"]
    assert min(starts) == 1, starts
    trained = {r["round"] for r in _jsonl(site3 / "out" / "metrics.jsonl") if r["kind"] == "train"}
    assert trained == {1, 2}
