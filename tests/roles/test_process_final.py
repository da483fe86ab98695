"""The aggregator process killed (SIGKILL) after FINAL went out, started again with the same command.

The restarted aggregator must resume in the final phase, not in a round:
write ``out/`` from its checkpoint, accept the sites' DONEs (one resent by a
site's transport, or sent after its new JOIN), exit 0, and leave the same
global adapters as an uninterrupted run.  Real processes and real signals,
steered by the roles' ledgers (see ``proc_harness``).
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from proc_harness import RoleProc, cleanup, launch, report, start_federation, wait_exit, wait_until
from roles_harness import make_fed, tiny_plan
from test_final import assert_same_adapters, cluster_adapters, reference_adapters
from test_process_faults import EXIT_S, SITES, _assert_outputs, _assert_site_finished, _lengthen_final_evaluation

from fltac_secure.data.layout import AGGREGATOR

TIMEOUTS = {"handshake_s": 5, "round_s": 20, "idle_s": 30, "join_s": 30}
"""round_s: what a site's DONE may wait for the restarted aggregator's ACK; join_s: the sites' time to come back."""


@pytest.mark.timeout(300)
def test_aggregator_killed_after_final_restarts_and_finishes(tmp_path: Path) -> None:
    """No DONE can reach the first aggregator: site2 and site3 are frozen (SIGSTOP) once their last UPDATE is
    in, site1 the moment its FINAL arrives (while it evaluates, before its DONE).  The aggregator is killed once
    its ledger shows FINAL sent to every site; the sites are continued and the aggregator started again.  site1's
    DONE goes to the new one (resent by its transport, or after a new JOIN); site2 and site3 get FINAL from it."""
    fed = make_fed(tmp_path / "fed", tiny_plan(rounds=2, timeouts=TIMEOUTS))
    last = fed.plan.rounds - 1
    _lengthen_final_evaluation(fed, "site1")  # a good fraction of a second between its FINAL and its DONE
    procs: dict[str, RoleProc] = {}
    try:
        procs = start_federation(fed.layout)
        every = list(procs.values())
        agg, s1 = procs[AGGREGATOR], procs["site1"]
        pending = set(SITES)

        def freeze() -> bool:
            for name in sorted(pending):
                gate = (s1.has("received", "FINAL") if name == "site1"
                        else agg.has("received", "UPDATE", last, name))  # fmt: skip
                if gate:
                    procs[name].send(signal.SIGSTOP)
                    pending.discard(name)
            return not pending

        wait_until("site1's FINAL and the others' last UPDATE", freeze, every, 150)
        wait_until("FINAL sent to every site", lambda: all(agg.has("sent", "FINAL", fed.plan.rounds, s) for s in SITES),
                   every, 60)
        agg.send(signal.SIGKILL)
        assert wait_exit(agg, 30, every) == -signal.SIGKILL
        for name in SITES:
            assert procs[name].stopped(), f"{name} is not stopped\n{report(every)}"
            assert not procs[name].has("sent", "DONE"), f"gate missed: {name} sent DONE\n{report(every)}"
            assert not agg.has("received", "DONE", peer=name), f"gate missed: DONE from {name}\n{report(every)}"
        assert not (fed.layout.aggregator / "state" / "final.json").exists()
        agg.log.rename(agg.log.with_name("aggregator-killed.log"))
        for name in SITES:
            procs[name].send(signal.SIGCONT)

        agg = procs[AGGREGATOR] = launch(fed.layout, AGGREGATOR)  # the same command again
        every = list(procs.values())
        rc = wait_exit(agg, EXIT_S, every)
        assert rc == 0, f"the restarted aggregator exited with {rc}\n{report(every)}"
        for name in SITES:
            rc = wait_exit(procs[name], 60, every)
            assert rc == 0, f"{name} exited with {rc}\n{report(every)}"
        assert len(s1.rows("received", "FINAL")) == 1, f"site1 was sent FINAL again\n{report(every)}"
        text = agg.text()
        assert "resuming from checkpoint: round 2 of 2" in text and "ROUND_START" not in text, report(every)
        assert "3 of 3 site(s) confirmed the final adapters" in text, report(every)
        _assert_outputs(fed, agg, every)
        record = json.loads((fed.layout.aggregator / "state" / "final.json").read_text())
        assert record["confirmed"] == SITES and record["never_confirmed"] == [], record
        for name in SITES:
            _assert_site_finished(fed, name)
        _, want = reference_adapters(fed, tmp_path / "ref")
        assert_same_adapters(cluster_adapters(fed.layout.aggregator / "out"), want)
    finally:
        cleanup(procs.values())
