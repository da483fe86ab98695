"""Faults with real processes: a site process killed mid-round; sessions ended by the idle timer.

Unlike ``test_faults.py`` (roles in threads, crashes raised by test hooks),
every role here is its own OS process started as `fltac aggregator|collaborator
start`, and the faults are real signals.  The aggregator sees what it sees in
production -- a ZeroMQ peer whose process is gone, sessions its idle timer
ends -- and must still finish the federation on quorum, exit 0 and write its
outputs.

Timing is steered, never guessed: the tests read the roles' ledgers (one
fsync'd line per message, written the moment it is sent or decoded) and hold
sites with SIGSTOP/SIGCONT so that a fault lands exactly where it is meant to;
see ``proc_harness``.  Each test costs a federation start-up (four Python
processes importing torch) plus the phase timeouts the fault costs.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from proc_harness import (
    RoleProc,
    cleanup,
    history,
    report,
    start_federation,
    wait_exit,
    wait_until,
)
from roles_harness import Fed, make_fed, tiny_plan

ROUND_S = 5.0
"""Phase timeout: each phase a dead site was asked in costs this much (the join window is the plan's join_s)."""

TRAINING = {"local_steps": 30, "batch_size": 8, "max_seq_length": 16, "learning_rate": 0.01}
"""Enough steps that a site trains for a good fraction of a second: room for the SIGSTOP gate of test A."""

EXIT_S = 150.0
"""Bound on the aggregator's exit once the fault is in (phase timeouts, outputs, a loaded machine)."""

SITES = ["site1", "site2", "site3"]


def _fed(tmp_path: Path, *, round_s: float = ROUND_S, idle_s: float = 30.0) -> Fed:
    timeouts = {"handshake_s": 5, "round_s": round_s, "idle_s": idle_s}
    return make_fed(tmp_path / "fed", tiny_plan(rounds=3, training=TRAINING, timeouts=timeouts))


def _assert_outputs(fed: Fed, agg: RoleProc, procs: list[RoleProc]) -> None:
    out = fed.layout.aggregator / "out"
    assert (out / "clusters.json").is_file(), f"no out/clusters.json\n{report(procs)}"
    assert json.loads((out / "clusters.json").read_text())["round"] == fed.plan.rounds
    assert [p for p in out.glob("cluster_*") if (p / "adapter_model.safetensors").is_file()], "no global adapter"
    assert (out / "metrics.jsonl").is_file() and (out / "clusters.png").is_file()
    assert (fed.layout.aggregator / "state" / "checkpoint.json").is_file()
    assert "global adapters and metrics written" in agg.text()


def _assert_site_finished(fed: Fed, name: str) -> None:
    folder = fed.layout.sites[name]
    state = json.loads((folder / "state" / "collaborator.json").read_text())
    assert state["finished"] is True, (name, state)
    rows = [json.loads(x) for x in (folder / "out" / "metrics.jsonl").read_text().splitlines() if x.strip()]
    assert {r["kind"] for r in rows} >= {"train", "final"}, name


# SIGTERM is what was observed; SIGKILL is the same on the wire (the CLI has no SIGTERM handler: both end the
# process at once and the kernel closes its socket), so it runs with -m slow to keep the default suite short.
@pytest.mark.timeout(300)
@pytest.mark.parametrize("sig", [pytest.param(signal.SIGTERM, id="SIGTERM"),
                                 pytest.param(signal.SIGKILL, id="SIGKILL", marks=pytest.mark.slow)])
def test_site_killed_between_sketches_and_assignment(tmp_path: Path, sig: signal.Signals) -> None:
    """site3 sends its round-1 SKETCHES and is killed before its ASSIGNMENT: rounds 1 and 2 finish without it.

    The gate: site1 is frozen (SIGSTOP) as soon as its round-0 UPDATE is in,
    so the aggregator cannot send round 1's ASSIGNMENT (it waits for site1's
    sketches) until site3 is dead and site1 is continued.  Then the ASSIGNMENT
    goes to site1, site2 and the vanished site3.
    """
    fed = _fed(tmp_path)
    procs: dict[str, RoleProc] = {}
    try:
        procs = start_federation(fed.layout)
        every = list(procs.values())
        agg, s1, s3 = procs["aggregator"], procs["site1"], procs["site3"]
        wait_until("site1's round-0 UPDATE at the aggregator", lambda: agg.has("received", "UPDATE", 0, "site1"),
                   every, 120)
        s1.send(signal.SIGSTOP)
        wait_until("site1 to stop", s1.stopped, every, 10)
        assert not s1.has("sent", "SKETCHES", 1), f"gate missed: site1 sent round-1 SKETCHES\n{report(every)}"
        wait_until("site3's round-1 SKETCHES at the aggregator", lambda: agg.has("received", "SKETCHES", 1, "site3"),
                   every, 60)
        assert not agg.has("sent", "ASSIGNMENT", 1), f"gate missed: round 1's ASSIGNMENT is out\n{report(every)}"
        s3.send(sig)
        # SIGTERM: an orderly stop (exit 128 + 15, "stopped by SIGTERM ... resume"); SIGKILL: killed outright
        assert wait_exit(s3, 30, every) == (128 + sig if sig == signal.SIGTERM else -sig)
        s1.send(signal.SIGCONT)

        rc = wait_exit(agg, EXIT_S, every)
        assert rc == 0, f"the aggregator exited with {rc}\n{report(every)}"
        for name in ("site1", "site2"):
            rc = wait_exit(procs[name], 60, every)
            assert rc == 0, f"{name} exited with {rc}\n{report(every)}"
        hist = history(agg)
        assert sorted(hist) == [0, 1, 2], hist
        assert hist[1]["sketched"] == SITES, hist[1]  # site3 was in round 1 up to its sketches
        assert hist[1]["updated"] == ["site1", "site2"], hist[1]  # then the round completed on quorum without it
        assert hist[2]["updated"] == ["site1", "site2"], hist[2]
        _assert_outputs(fed, agg, every)
        for name in ("site1", "site2"):
            _assert_site_finished(fed, name)
    finally:
        cleanup(procs.values())


IDLE_S = 2.0

FINAL_EVAL_ROWS = 10_000
"""Local test examples per task at the sites the idle test acts on.  Rounds evaluate the first 128, the
final evaluation all of them: a good fraction of a second between a site's FINAL and its DONE."""


def _lengthen_final_evaluation(fed: Fed, name: str, rows: int = FINAL_EVAL_ROWS) -> None:
    for path in (fed.layout.sites[name] / "data").glob("*.test.csv"):
        head, *body = path.read_text().splitlines()
        path.write_text("\n".join([head, *(body[i % len(body)] for i in range(rows))]) + "\n")


@pytest.mark.timeout(300)
def test_idle_timeout_ends_a_vanished_and_a_frozen_session(tmp_path: Path) -> None:
    """idle_s = 2 < round_s: once FINAL is out, site3 vanishes (SIGKILL) and site2 is frozen (SIGSTOP) past idle_s.

    Nothing more is sent to either: the aggregator waits round_s for their
    DONEs, and meanwhile its idle timer ends both sessions.  For site2 (alive)
    that BYE waits in its socket; on SIGCONT it reconnects and delivers its
    DONE.  For site3 the BYE goes to a ZeroMQ peer that is gone: the
    aggregator must shrug that off, finish with 2 of 3 DONEs and write its
    outputs.
    """
    fed = _fed(tmp_path, round_s=12.0, idle_s=IDLE_S)
    final = fed.plan.rounds  # FINAL and DONE carry the number of rounds
    for name in ("site2", "site3"):
        _lengthen_final_evaluation(fed, name)
    procs: dict[str, RoleProc] = {}
    try:
        procs = start_federation(fed.layout)
        every = list(procs.values())
        agg, s2, s3 = procs["aggregator"], procs["site2"], procs["site3"]
        pending = {"site2": signal.SIGSTOP, "site3": signal.SIGKILL}

        def act() -> bool:  # each gets its signal the moment its FINAL arrives (while it evaluates)
            for name, sig in list(pending.items()):
                if procs[name].has("received", "FINAL", final):
                    procs[name].send(sig)
                    del pending[name]
            return not pending

        wait_until("FINAL at site2 and site3", act, every, 150, may_exit=("site1", "site3"))
        # SIGTERM: an orderly stop (exit 128 + 15, "stopped by SIGTERM ... resume"); SIGKILL: killed outright
        assert wait_exit(s3, 30, every) == -signal.SIGKILL
        wait_until("site2 to stop", s2.stopped, every, 10, may_exit=("site1", "site3"))
        for p in (s2, s3):
            assert not p.has("sent", "DONE"), f"gate missed: {p.name} sent DONE before its signal\n{report(every)}"
        # site2 stays frozen until the idle timer has ended its session (the aggregator's ledger has the BYE)
        wait_until("the idle BYE to site2", lambda: agg.has("sent", "BYE", peer="site2") or agg.proc.poll() is not None,
                   every, 30, may_exit=("site1", "site3", "aggregator"))
        s2.send(signal.SIGCONT)

        rc = wait_exit(agg, EXIT_S, every)
        assert rc == 0, f"the aggregator exited with {rc}\n{report(every)}"
        for name in ("site1", "site2"):
            rc = wait_exit(procs[name], 60, every)
            assert rc == 0, f"{name} exited with {rc}\n{report(every)}"
        hist = history(agg)
        assert sorted(hist) == [0, 1, 2] and all(row["updated"] == SITES for row in hist.values()), hist
        assert len(agg.rows("sent", "WELCOME", peer="site2")) >= 2, "site2 did not reconnect after the idle BYE"
        assert {r["peer"] for r in agg.rows("received", "DONE")} == {"site1", "site2"}
        assert "2 of 3 site(s) confirmed the final adapters" in agg.text(), report(every)
        _assert_outputs(fed, agg, every)
        for name in ("site1", "site2"):
            _assert_site_finished(fed, name)
    finally:
        cleanup(procs.values())
