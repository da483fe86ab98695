"""Secure aggregation under faults, with real processes: sites killed mid-protocol, the aggregator killed and
restarted mid-protocol, a site revoked between rounds.

The steering is the process tests' (``proc_harness``): the ledgers (one
fsync'd line per message) say where each role is, SIGSTOP holds a site so
that a kill lands exactly in the stage it is meant for. The reference is the
in-process arithmetic over the participation the aggregator recorded
(``fault_reference.simulate``); secure sums equal it within the encoding
bound, so the comparison has a tolerance of 1e-5 where the plain fault tests
compare bit for bit.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fault_reference import full_participation, read_outputs, simulate
from proc_harness import RoleProc, cleanup, history, launch, report, start_federation, wait_exit, wait_until
from roles_harness import SAME_WIDTH, Fed, make_fed, start, tiny_plan

from fltac_secure.data.layout import AGGREGATOR
from fltac_secure.federation import secure_messages as sm
from fltac_secure.federation.rounds import ServerState

TIMEOUTS = {"handshake_s": 5, "round_s": 5, "idle_s": 30, "join_s": 8}


def _final_state(fed: Fed) -> ServerState:
    return read_outputs(fed.layout.aggregator, fed.layout.sites).state


def secure_reference(plan: Any, root: Path, hist: dict[int, dict[str, Any]]) -> ServerState:
    """The simulator's arithmetic over what the aggregator recorded: who sketched, and per cluster whether it was
    summed and over which survivors (plain float means), or skipped (its members keep their own adapters)."""
    from fltac_secure.data.layout import load_federated_dir
    from fltac_secure.federation.rounds import client_round, server_assign
    from fltac_secure.federation.secure_round import plan_secure_round, secure_outcome
    from fltac_secure.learning.adapters import initial_vector
    from fltac_secure.learning.aggregate import slot_weights, weighted_mean
    from fltac_secure.secagg import ClusterResult, Context
    from fltac_secure.simulation.context import SimContext

    ctx = SimContext(plan, load_federated_dir(plan, root))
    init = initial_vector(plan, plan.training.seed)
    state = ServerState(round=0, k=plan.k, vectors={})
    for r in sorted(hist):
        row = hist[r]
        for site in row["participants"]:
            for slot in ctx.slots_of(site):
                state.vectors.setdefault(slot.key, init.copy())
        own_start = {k: state.vectors[k] for k in state.vectors}
        results = {s: client_round(ctx.model, s, ctx.slots_of(s), own_start, r, plan) for s in row["sketched"]}
        vectors = {x.key: x.vector for s in row["sketched"] for x in results[s]}
        counts = {x.key: x.n_samples for s in row["sketched"] for x in results[s]}
        sketches = {x.key: np.asarray(x.sketch, dtype=np.float64) for s in row["sketched"] for x in results[s]}
        assignment = server_assign(state, sketches, plan)
        sr = plan_secure_round(plan, "reference", r, 0, assignment.labels, counts, len(init))
        weights = slot_weights(counts, plan.aggregation.weighting)
        total = {c: sum(weights[k] for k, cc in assignment.labels.items() if cc == c) for c in sr.slots}
        sums = {}
        for cid, rep in row["secure"].items():
            c = int(cid)
            keys = [k for k, cc in assignment.labels.items() if cc == c and k.rpartition("/")[0] in rep.get("survivors", [])]
            if rep["status"] == "summed":
                w = sum(weights[k] for k in keys) / total[c]
                mean = weighted_mean([vectors[k] for k in keys], [counts[k] for k in keys]).astype(np.float64)
                sums[c] = ClusterResult(Context("reference", r, 0, c), tuple(rep["survivors"]), tuple(rep["dropped"]),
                                        mean * w, w)  # fmt: skip
            else:
                sums[c] = ClusterResult(Context("reference", r, 0, c), (), tuple(rep["members"]), reason="skipped")
        state, _ = secure_outcome(state, assignment, sr, sums)
        state = ServerState(state.round, state.k, {**state.vectors, **{k: vectors[k] for k in state.own if k in vectors}},
                            state.cluster_vectors, state.clusters, state.own)  # fmt: skip
    return state


def _acked(p: RoleProc, kind: str, rnd: int) -> bool:
    """``p`` sent ``kind`` of round ``rnd`` and has its ACK (so freezing it does not run down its send timeout)."""
    rows = p.ledger()
    sent = [i for i, r in enumerate(rows) if r["direction"] == "sent" and r["kind"] == kind and r["round"] == rnd]
    return bool(sent) and any(r["direction"] == "received" and r["kind"] == "ACK" for r in rows[sent[-1] + 1 :])


def _freeze(p: RoleProc, kind: str, rnd: int, every: list[RoleProc], **kw: Any) -> None:
    """Freeze ``p`` once its ``kind`` of round ``rnd`` is acknowledged."""
    wait_until(f"{p.name}'s {kind} of round {rnd}, acknowledged", lambda: _acked(p, kind, rnd), every, 120, **kw)
    p.send(signal.SIGSTOP)
    wait_until(f"{p.name} to stop", p.stopped, every, 10, **kw)


def _hold_before_keys(agg: RoleProc, held: RoleProc, blocker: RoleProc, every: list[RoleProc]) -> None:
    """Leave ``held`` frozen with its round-1 SKETCHES at the aggregator, before it can answer round 1's ASSIGNMENT.

    ``blocker`` is frozen first (once its round-0 part is in), so the aggregator cannot send
    round 1's ASSIGNMENT (it waits for the blocker's sketches) while ``held`` is being frozen.
    """
    _freeze(blocker, sm.SA_REVEAL, 0, every)
    assert not agg.has("received", "SKETCHES", 1, blocker.name), f"gate missed\n{report(every)}"
    _freeze(held, "SKETCHES", 1, every)
    blocker.send(signal.SIGCONT)


def _assert_close(got: ServerState, want: ServerState, procs: list[RoleProc]) -> None:
    assert got.round == want.round and sorted(got.vectors) == sorted(want.vectors), report(procs)
    for key, vec in want.vectors.items():
        np.testing.assert_allclose(got.vectors[key], vec, atol=1e-5, err_msg=key)


@pytest.mark.timeout(400)
def test_sites_killed_after_their_keys_and_after_their_masked_vector(tmp_path: Path) -> None:
    """Round 1 of 5 sites (t = 3): site4 dies after SA_KEYS, site5 after SA_MASKED; the round sums the survivors."""
    plan = tiny_plan(sites=5, rounds=2, quorum=3, timeouts=TIMEOUTS,
                     secure_aggregation={"enabled": True, "threshold": 0.5})  # fmt: skip
    fed = make_fed(tmp_path / "fed", plan)
    procs: dict[str, RoleProc] = {}
    try:
        procs = start_federation(fed.layout)
        every = list(procs.values())
        agg, held, keys_victim, mask_victim = procs[AGGREGATOR], procs["site1"], procs["site4"], procs["site5"]
        _hold_before_keys(agg, held, procs["site2"], every)  # the key exchange cannot finish without site1
        wait_until("site4's round-1 keys at the aggregator", lambda: agg.has("received", sm.SA_KEYS, 1, "site4"),
                   every, 60)  # fmt: skip
        assert not agg.has("sent", sm.SA_KEYBOOK, 1), f"gate missed: key books are out\n{report(every)}"
        keys_victim.send(signal.SIGKILL)
        wait_exit(keys_victim, 30, every)
        held.send(signal.SIGCONT)
        # the aggregator waits round_s for site4's shares; site1 is held from its shares to site5's death
        _freeze(held, sm.SA_SHARES, 1, every, may_exit=["site4"])
        assert not agg.has("sent", sm.SA_DELIVERY, 1), f"gate missed: shares delivered\n{report(every)}"
        wait_until("site5's masked vector at the aggregator", lambda: agg.has("received", sm.SA_MASKED, 1, "site5"),
                   every, 60, may_exit=["site4"])  # fmt: skip
        assert not agg.has("sent", sm.SA_SURVIVORS, 1), f"gate missed: survivor sets are out\n{report(every)}"
        mask_victim.send(signal.SIGKILL)
        wait_exit(mask_victim, 30, every)
        held.send(signal.SIGCONT)
        assert wait_exit(agg, 200, every) == 0, report(every)
        for name in ("site1", "site2", "site3"):
            assert wait_exit(procs[name], 60, every) == 0, report(every)
        hist = history(agg)
        row = hist[1]
        assert row["updated"] == ["site1", "site2", "site3", "site5"], row
        summed = [c for c in row["secure"].values() if c["status"] == "summed"]
        # the intended case happened: a cluster summed over its survivors, site4 (keys only) out, site5 (masked) in
        assert any("site5" in c["survivors"] and "site4" in c["dropped"] for c in summed), row["secure"]
        for c in row["secure"].values():  # a cluster that lost too many members is skipped, never summed wrong
            if c["status"] != "summed":
                assert "threshold" in c["reason"] and set(c["members"]) & {"site4", "site5"}, c
        got, want = _final_state(fed), secure_reference(plan, fed.layout.root, hist)
        assert got.own == {k: r for k, r in want.own.items()}, (got.own, want.own)
        for key, vec in want.vectors.items():
            if key not in got.own:  # an own slot's vector lives at its site only
                np.testing.assert_allclose(got.vectors[key], vec, atol=1e-5, err_msg=key)
    finally:
        cleanup(procs.values())


@pytest.mark.timeout(400)
def test_aggregator_killed_mid_protocol_restarts_the_round_with_fresh_keys(tmp_path: Path) -> None:
    """The aggregator is SIGKILLed during round 1's key exchange and started again: the run equals an uninterrupted one."""
    timeouts = {**TIMEOUTS, "round_s": 30}
    plan = tiny_plan(rounds=2, timeouts=timeouts, secure_aggregation={"enabled": True}, tasks=SAME_WIDTH)
    fed = make_fed(tmp_path / "fed", plan)
    procs: dict[str, RoleProc] = {}
    try:
        procs = start_federation(fed.layout)
        every = list(procs.values())
        agg, held = procs[AGGREGATOR], procs["site1"]
        _hold_before_keys(agg, held, procs["site2"], every)
        wait_until("round-1 keys of site2 and site3", lambda: all(agg.has("received", sm.SA_KEYS, 1, s)
                                                                   for s in ("site2", "site3")), every, 60)  # fmt: skip
        agg.send(signal.SIGKILL)
        wait_exit(agg, 30, every)
        held.send(signal.SIGCONT)
        agg2 = launch(fed.layout, AGGREGATOR, attempt=1)
        procs[AGGREGATOR] = agg2
        every = list(procs.values())
        assert wait_exit(agg2, 240, every) == 0, report(every)
        for name in ("site1", "site2", "site3"):
            assert wait_exit(procs[name], 60, every) == 0, report(every)
        assert "resuming from checkpoint: round 1" in agg2.text()
        keys = {r["msg_id"] for r in procs["site2"].rows("sent", sm.SA_KEYS, 1)}  # a resent message keeps its id
        assert len(keys) == 2, keys  # one run before the kill, a fresh one after (new keys, new attempt)
        hist = history(agg2)
        assert hist[1]["updated"] == ["site1", "site2", "site3"]
        _assert_close(_final_state(fed), simulate(plan, fed.layout.root, full_participation(plan)), every)
    finally:
        cleanup(procs.values())


def test_a_site_revoked_between_rounds_is_left_out_of_the_next(tmp_path: Path) -> None:
    from fltac_secure.federation.demo import publish_crl
    from fltac_secure.pki import revoke

    timeouts = {"handshake_s": 5, "round_s": 30, "idle_s": 30, "join_s": 5}
    plan = tiny_plan(rounds=2, timeouts=timeouts, secure_aggregation={"enabled": True}, tasks=SAME_WIDTH)
    fed = make_fed(tmp_path / "fed", plan)
    agg_obj = fed.aggregator(join_window=None)

    def after(report: Any) -> None:
        if report.round == 0:
            revoke("site3", fed.layout.ca_dir)
            publish_crl(fed.layout)
            assert agg_obj.server is not None
            agg_obj.server.reload_crl()
            deadline = time.monotonic() + 10
            while "site3" in agg_obj.server.peers() and time.monotonic() < deadline:
                time.sleep(0.05)  # the transport thread ends the session

    agg_obj.on_round = after
    agg = start(agg_obj)
    cols = {s: start(fed.collaborator(s)) for s in fed.layout.sites}
    agg.join(180)
    assert not agg.error, agg.error
    row = agg_obj.history[1]
    assert row["participants"] == ["site1", "site2"] and row["updated"] == ["site1", "site2"]
    assert all(set(c.get("survivors", c.get("members", []))) <= {"site1", "site2"} for c in row["secure"].values())
    cols["site3"].join(60)
    assert cols["site3"].error and "revoked" in str(cols["site3"].error[0])
