"""The process fault matrix (issue 10, item 7): kill a role in each phase of a round, restart it, same result.

Each cell (role, signal, phase) runs a 3-site, 2-round federation of real
processes (`fltac aggregator|collaborator start`, as `fltac demo` starts
them), lands the signal in the chosen phase of round 1 or of the end
(``fault_steer.GATES``: gated on the ledgers and SIGSTOP, never on sleeps),
and starts the killed role again with the same command: the aggregator at
once, a site after ``SITE_GAP_S``.  The run must then complete (every
process exits 0) and leave exactly the adapters of the uninterrupted run:
the aggregator's final state, its exported ``out/cluster_*`` files and every
site's final adapters, compared bit for bit with the simulation of the
participation the aggregator recorded (``fault_reference``), which is the
uninterrupted run's when everyone took part
(``test_uninterrupted_run_equals_reference``).
A killed site may miss a round only if it is not back within ``round_s``;
an aggregator restart must cost no site a round.

Quantised downloads (``compression.download_bits``) add cells of their own:
the round starts are rounded with draws from the aggregator's checkpointed
``rounding_key``, so a restarted aggregator must send the same ROUND_START
bytes and keep the exact means, and the reference replays those draws.

With ``clustering.by_labels`` (``LABEL_CELLS``) the clusters depend on the
label counts the sites declare in JOIN, which a restarted role must declare
or learn again.

The default suite runs four representative cells (the aggregator SIGKILLed
with the ASSIGNMENT out; a site SIGTERMed mid-UPDATE; with 8-bit downloads,
the aggregator SIGKILLed while the sites train on its ROUND_START; with
``by_labels``, the aggregator SIGKILLed while it collects the SKETCHES); ``-m
slow`` runs all 24, the other download and ``by_labels`` cells, the uninterrupted reference and a site that never
returns (the other branch of the reference: the simulation of a partial participation).  Each
cell costs a federation start-up (four Python processes importing torch)
plus a restart.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from fault_reference import (
    differences,
    full_participation,
    participation,
    read_outputs,
    simulate,
)
from fault_steer import (
    GATES,
    PHASES,
    VICTIM,
    Steer,
    expected_exit,
    lengthen_final_evaluation,
    slow_final_sites,
)
from proc_harness import RoleProc, cleanup, report, start_federation, wait_exit
from roles_harness import Fed, make_fed, tiny_plan

from fltac_secure.data.layout import AGGREGATOR
from fltac_secure.plan import Plan

ROUND_S = 30.0
"""Phase timeout: longer than a site's restart (Python, torch, model and data) on a loaded 2-core machine,
so that a restarted site is back in the round it left.  No cell waits it out."""

JOIN_S = 30.0
"""Join window of a (restarted) aggregator: the sites are alive and rejoin within seconds; a restarted final
phase waits this long for a site that exited before its DONE was recorded."""

TRAINING = {"local_steps": 30, "batch_size": 8, "max_seq_length": 16, "learning_rate": 0.01}
"""Enough steps that training takes a good fraction of a second: the window of the training gates."""

EXIT_S = 240.0
"""Bound on the aggregator's exit after the restart (a loaded machine; a restarted final phase may wait)."""

SIGNALS = (signal.SIGKILL, signal.SIGTERM)
DEFAULT = {("aggregator", "SIGKILL", "assignment", 32), ("site", "SIGTERM", "update", 32),
           ("aggregator", "SIGKILL", "training", 8)}
"""The cells of the default suite; the rest run with -m slow."""

DOWNLOAD_CELLS = [("aggregator", sig, phase) for sig in SIGNALS for phase in ("training", "sketches", "update", "final")]
DOWNLOAD_CELLS += [("site", signal.SIGKILL, "training"), ("site", signal.SIGTERM, "update")]
"""With 8-bit downloads: the phases where a ROUND_START is in flight or answered, and the FINAL hand-out."""


LABEL_CELLS = [("aggregator", signal.SIGKILL, "sketches"), ("aggregator", signal.SIGTERM, "assignment"),
               ("site", signal.SIGKILL, "sketches")]
"""With ``clustering.by_labels`` (and the ``trim_head`` it needs): a restarted aggregator clusters with the label
counts the sites declare again in JOIN; a restarted site declares them again."""


def matrix_plan(download_bits: int = 32, by_labels: bool = False) -> Plan:
    timeouts = {"handshake_s": 5, "round_s": ROUND_S, "idle_s": 30, "join_s": JOIN_S}
    extra: dict[str, object] = {}
    if download_bits < 32:
        extra["compression"] = {"download_bits": download_bits, "block_size": 16}
    if by_labels:
        extra["compression"] = {"trim_head": True}
        extra["clustering"] = {"sketch_dim": 16, "n_init": 4, "by_labels": True}
    return tiny_plan(rounds=2, training=TRAINING, timeouts=timeouts, **extra)


def _cells() -> Iterator[object]:
    cells = [(role, sig, phase, 32) for role in ("aggregator", "site") for sig in SIGNALS for phase in PHASES]
    for role, sig, phase, bits in cells + [(*cell, 8) for cell in DOWNLOAD_CELLS]:
        marks = [] if (role, sig.name, phase, bits) in DEFAULT else [pytest.mark.slow]
        prefix = f"download{bits}-" if bits < 32 else ""
        yield pytest.param(role, sig, phase, bits, id=f"{prefix}{role}-{sig.name}-{phase}", marks=marks)


def _await_end(st: Steer) -> None:
    """The aggregator and every site (their latest incarnations) exit 0."""
    st.may_exit = set(st.procs)
    every = st.every()
    rc = wait_exit(st.agg, EXIT_S, every)
    assert rc == 0, f"the aggregator exited with {rc}\n{report(every)}"
    for name, p in st.procs.items():
        if name != AGGREGATOR:
            rc = wait_exit(p, 90, every)
            assert rc == 0, f"{name} ({p.log.name}) exited with {rc}\n{report(every)}"


def _assert_reference(fed: Fed, st: Steer, role: str) -> None:
    got = read_outputs(fed.layout.aggregator, fed.layout.sites)
    parts = participation(got.history)
    if parts != full_participation(fed.plan):
        missing = {s for present, sketched, updated in parts for s in set(fed.plan.roster) - set(updated)}
        assert role == "site" and missing <= {VICTIM}, (
            f"sites {sorted(missing)} missed rounds: {got.history}\n{report(st.every())}")
    want = simulate(fed.plan, fed.layout.root, parts, got.state.rounding_key)
    bad = differences(fed.plan, got, want)
    assert not bad, "\n".join(bad[:20]) + f"\nparticipation {parts}"
    for name, folder in fed.layout.sites.items():
        state = json.loads((folder / "state" / "collaborator.json").read_text())
        assert state["finished"] is True, (name, state)


@pytest.mark.timeout(480)
@pytest.mark.parametrize(("role", "sig", "phase", "download_bits"), list(_cells()))
def test_fault_matrix(tmp_path: Path, role: str, sig: signal.Signals, phase: str, download_bits: int) -> None:
    _run_cell(tmp_path, matrix_plan(download_bits), role, sig, phase)


@pytest.mark.timeout(480)
@pytest.mark.parametrize(("role", "sig", "phase"), [
    pytest.param(role, sig, phase, id=f"{role}-{sig.name}-{phase}",
                 marks=[] if (role, sig, phase) == LABEL_CELLS[0] else [pytest.mark.slow])
    for role, sig, phase in LABEL_CELLS])
def test_fault_matrix_clustering_by_labels(tmp_path: Path, role: str, sig: signal.Signals, phase: str) -> None:
    """A kill and restart with ``clustering.by_labels`` on ends in the uninterrupted run's adapters too."""
    _run_cell(tmp_path, matrix_plan(by_labels=True), role, sig, phase)


def _run_cell(tmp_path: Path, plan: Plan, role: str, sig: signal.Signals, phase: str) -> None:
    fed = make_fed(tmp_path / "fed", plan)
    for name in slow_final_sites(role, phase):
        lengthen_final_evaluation(fed.layout, name)
    procs: dict[str, RoleProc] = {}
    st: Steer | None = None
    try:
        procs = start_federation(fed.layout)
        st = Steer(fed.layout, procs, fed.plan.rounds)
        victim = GATES[(role, phase)](st)
        rc = st.kill(victim, sig)
        assert rc == expected_exit(sig), f"{victim.name} exited with {rc}\n{report(st.every())}"
        st.thaw_all()
        st.restart(victim.name)
        _await_end(st)
        _assert_reference(fed, st, role)
    finally:
        cleanup(st.every() if st is not None else procs.values())


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_uninterrupted_run_equals_reference(tmp_path: Path) -> None:
    """Without a fault, the process run equals the simulation bit for bit: the reference of the matrix."""
    fed = make_fed(tmp_path / "fed", matrix_plan())
    procs: dict[str, RoleProc] = {}
    try:
        procs = start_federation(fed.layout)
        st = Steer(fed.layout, procs, fed.plan.rounds)
        _await_end(st)
        got = read_outputs(fed.layout.aggregator, fed.layout.sites)
        assert participation(got.history) == full_participation(fed.plan), got.history
        bad = differences(fed.plan, got, simulate(fed.plan, fed.layout.root, full_participation(fed.plan)))
        assert not bad, "\n".join(bad[:20])
    finally:
        cleanup(procs.values())


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_site_that_never_returns_equals_simulation_of_its_participation(tmp_path: Path) -> None:
    """The other branch of the reference: site3 is SIGKILLed after its round-1 SKETCHES and not started again.
    Round 1 clusters its sketches but averages only the others' UPDATEs; the outputs must equal the
    simulation of exactly that participation, bit for bit (and differ from the uninterrupted run's)."""
    timeouts = {"handshake_s": 5, "round_s": 5.0, "idle_s": 30, "join_s": JOIN_S}
    fed = make_fed(tmp_path / "fed", tiny_plan(rounds=2, training=TRAINING, timeouts=timeouts))
    procs: dict[str, RoleProc] = {}
    st: Steer | None = None
    try:
        procs = start_federation(fed.layout)
        st = Steer(fed.layout, procs, fed.plan.rounds)
        victim = GATES[("site", "sketches")](st)
        assert st.kill(victim, signal.SIGKILL) == -signal.SIGKILL
        st.thaw_all()
        del st.procs[VICTIM]  # never started again
        _await_end(st)
        got = read_outputs(fed.layout.aggregator, fed.layout.sites)
        parts = participation(got.history)
        everyone = tuple(fed.plan.roster)
        assert parts == ((everyone, everyone, everyone), (everyone, everyone, ("site1", "site2"))), parts
        bad = differences(fed.plan, got, simulate(fed.plan, fed.layout.root, parts))
        assert not bad, "\n".join(bad[:20])
        assert differences(fed.plan, got, simulate(fed.plan, fed.layout.root, full_participation(fed.plan)))
    finally:
        cleanup(st.every() if st is not None else procs.values())
