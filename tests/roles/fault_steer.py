"""Landing one kill in a chosen phase of a process federation, and bringing the killed role back.

A cell of the fault matrix is (role, signal, phase).  Each phase has a gate
(``GATES``): it steers the federation, from outside, until the victim is
frozen (SIGSTOP) exactly in that phase, then checks on the frozen ledgers that
it is (``gate missed: ...`` otherwise).  Only then is the signal sent
(SIGTERM is followed by SIGCONT so that the stopped process can act on it).

The phases, for the aggregator and for the killed site (``VICTIM``), in round
``ROUND`` (the last one: its restart resumes from round 0's checkpoint):

- ``training``: ROUND_START is out, no SKETCHES back (the site: it trains);
- ``sketches``: SKETCHES arrived, ASSIGNMENT not yet out (``HELD`` still trains);
- ``assignment``: ASSIGNMENT is out, no UPDATE back (the site: it has not answered);
- ``update``: some UPDATEs are in, the round is still open (the site: it sent its UPDATE);
- ``final``: FINAL is out (the aggregator wrote out/ before it), no DONE back: every site evaluates
  (the site: it evaluates);
- ``done``: the aggregator: the DONEs of two sites are in and recorded in ``state/final.json``, ``HELD``
  still evaluates (after the last DONE it exits within milliseconds: no window to land a signal in);
  the site: its DONE is in at the aggregator, it is about to exit.

Windows are widened by freezing other sites, never by sleeping: ``HELD`` is
frozen as soon as its UPDATE of the previous round is in, i.e. before it can
send this round's SKETCHES, so the aggregator cannot send ASSIGNMENT until it
is continued.  The final evaluation of a site caught in FINAL is lengthened
(``lengthen_final_evaluation``) so that it takes seconds.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from proc_harness import RoleProc, launch, report, wait_exit, wait_until

from fltac_secure.data.layout import AGGREGATOR
from fltac_secure.federation.demo import FederationLayout

PHASES = ("training", "sketches", "assignment", "update", "final", "done")
ROUND = 1
"""The round the fault lands in (plans of the matrix have 2 rounds)."""
VICTIM, HELD, SECOND = "site3", "site1", "site2"
SITE_GAP_S = 1.0
"""A killed site is started again this long after it exited; the aggregator at once."""
FINAL_EVAL_ROWS = 10_000


def lengthen_final_evaluation(layout: FederationLayout, name: str, rows: int = FINAL_EVAL_ROWS) -> None:
    """More local test rows at ``name``: rounds evaluate 128 of them, FINAL all (seconds). Training data,
    and so every adapter, is unchanged."""
    for path in (layout.sites[name] / "data").glob("*.test.csv"):
        head, *body = path.read_text().splitlines()
        path.write_text("\n".join([head, *(body[i % len(body)] for i in range(rows))]) + "\n")


def slow_final_sites(role: str, phase: str) -> tuple[str, ...]:
    """The sites whose final evaluation a cell needs long: those frozen while they evaluate."""
    if role == "site":
        return (VICTIM,) if phase == "final" else ()
    return {"final": (HELD, SECOND, VICTIM), "done": (HELD,)}.get(phase, ())


@dataclass
class Steer:
    """The running roles of one federation (latest incarnation of each) and the ones held frozen."""

    layout: FederationLayout
    procs: dict[str, RoleProc]
    rounds: int
    frozen: list[RoleProc] = field(default_factory=list)
    killed: list[RoleProc] = field(default_factory=list)
    may_exit: set[str] = field(default_factory=set)

    @property
    def agg(self) -> RoleProc:
        return self.procs[AGGREGATOR]

    def every(self) -> list[RoleProc]:
        return [*self.killed, *self.procs.values()]

    def wait(self, what: str, cond: Callable[[], bool], timeout: float = 90.0) -> None:
        wait_until(what, cond, list(self.procs.values()), timeout, may_exit=self.may_exit)

    def gate(self, ok: bool, what: str) -> None:
        if not ok:
            raise AssertionError(f"gate missed: {what}\n{report(self.every())}")

    def freeze(self, name: str) -> RoleProc:
        p = self.procs[name]
        p.send(signal.SIGSTOP)
        self.wait(f"{name} to stop", p.stopped, 10)
        self.frozen.append(p)
        return p

    def freeze_when(self, name: str, what: str, cond: Callable[[], bool], timeout: float = 90.0) -> RoleProc:
        self.wait(what, cond, timeout)
        return self.freeze(name)

    def thaw(self, name: str) -> None:
        p = self.procs[name]
        self.frozen.remove(p)
        p.send(signal.SIGCONT)

    def thaw_all(self) -> None:
        for p in list(self.frozen):
            self.thaw(p.name)

    def hold_before_sketches(self, name: str) -> None:
        """Freeze ``name`` once its UPDATE of the previous round is in: it cannot have sent this round's SKETCHES."""
        agg, p = self.agg, self.procs[name]
        self.freeze_when(name, f"{name}'s round-{ROUND - 1} UPDATE at the aggregator",
                         lambda: agg.has("received", "UPDATE", ROUND - 1, name))
        self.gate(not p.has("sent", "SKETCHES", ROUND), f"{name} already sent its round-{ROUND} SKETCHES")

    def got(self, kind: str, rnd: int, *sites: str) -> Callable[[], bool]:
        """The aggregator received ``kind`` of round ``rnd`` from each of ``sites``."""
        return lambda: all(self.agg.has("received", kind, rnd, s) for s in sites)

    # -- the kill and the restart ------------------------------------------------------------
    def kill(self, victim: RoleProc, sig: signal.Signals) -> int:
        """Send ``sig`` to the frozen ``victim`` (SIGTERM: and continue it); its exit code."""
        victim.send(sig)
        self.frozen.remove(victim)
        if sig != signal.SIGKILL:
            victim.send(signal.SIGCONT)  # a stopped process acts on SIGTERM once it is continued
        rc = wait_exit(victim, 60, self.every())
        self.killed.append(victim)
        return rc

    def restart(self, name: str) -> RoleProc:
        """Start ``name`` again with the same command (a site after ``SITE_GAP_S``)."""
        if name != AGGREGATOR:
            time.sleep(SITE_GAP_S)  # the gap the matrix specifies, not a synchronisation
        attempt = sum(p.name == name for p in self.killed)
        self.procs[name] = launch(self.layout, name, attempt=attempt)
        return self.procs[name]


# -- the gates: each returns the victim, frozen in its phase ---------------------------------------


def _site_training(st: Steer) -> RoleProc:
    v = st.freeze_when(VICTIM, f"{VICTIM} to receive ROUND_START {ROUND}",
                       lambda: st.procs[VICTIM].has("received", "ROUND_START", ROUND))
    st.gate(not v.has("sent", "SKETCHES", ROUND), f"{VICTIM} finished training before it was stopped")
    return v


def _site_sketches(st: Steer) -> RoleProc:
    st.hold_before_sketches(HELD)
    v = st.freeze_when(VICTIM, f"{VICTIM}'s SKETCHES at the aggregator", st.got("SKETCHES", ROUND, VICTIM))
    st.gate(not st.agg.has("sent", "ASSIGNMENT", ROUND), f"round {ROUND}'s ASSIGNMENT is out")
    return v


def _site_assignment(st: Steer) -> RoleProc:
    st.hold_before_sketches(HELD)
    v = st.freeze_when(VICTIM, f"{VICTIM}'s SKETCHES at the aggregator", st.got("SKETCHES", ROUND, VICTIM))
    st.thaw(HELD)
    st.wait(f"ASSIGNMENT to {VICTIM}", lambda: st.agg.has("sent", "ASSIGNMENT", ROUND, VICTIM))
    st.gate(not v.has("sent", "UPDATE", ROUND), f"{VICTIM} answered its ASSIGNMENT")
    return v


def _update_open(st: Steer) -> None:
    """HELD and SECOND held before SKETCHES; HELD's SKETCHES in, HELD frozen again; SECOND continued, so
    that ASSIGNMENT goes out and the UPDATE phase runs while HELD cannot answer."""
    st.hold_before_sketches(HELD)
    st.hold_before_sketches(SECOND)
    st.wait(f"{VICTIM}'s SKETCHES at the aggregator", st.got("SKETCHES", ROUND, VICTIM))
    st.thaw(HELD)
    st.freeze_when(HELD, f"{HELD}'s SKETCHES at the aggregator", st.got("SKETCHES", ROUND, HELD))
    st.thaw(SECOND)


def _site_update(st: Steer) -> RoleProc:
    _update_open(st)
    v = st.freeze_when(VICTIM, f"{VICTIM} to send its UPDATE", lambda: st.procs[VICTIM].has("sent", "UPDATE", ROUND))
    st.gate(not st.agg.has("received", "UPDATE", ROUND, HELD), f"{HELD}'s UPDATE is in: the round is not open")
    return v


def _site_final(st: Steer) -> RoleProc:
    v = st.freeze_when(VICTIM, f"FINAL at {VICTIM}", lambda: st.procs[VICTIM].has("received", "FINAL", st.rounds))
    st.gate(not v.has("sent", "DONE", st.rounds), f"{VICTIM} sent DONE before it was stopped")
    return v


def _site_done(st: Steer) -> RoleProc:
    st.may_exit = {HELD, SECOND}
    return st.freeze_when(VICTIM, f"{VICTIM}'s DONE at the aggregator", st.got("DONE", st.rounds, VICTIM))


def _aggregator_training(st: Steer) -> RoleProc:
    a = st.freeze_when(AGGREGATOR, f"ROUND_START {ROUND} to every site",
                       lambda: {r["peer"] for r in st.agg.rows("sent", "ROUND_START", ROUND)} == {HELD, SECOND, VICTIM})
    st.gate(not a.has("received", "SKETCHES", ROUND), f"round-{ROUND} SKETCHES arrived before the stop")
    return a


def _aggregator_sketches(st: Steer) -> RoleProc:
    st.hold_before_sketches(HELD)
    a = st.freeze_when(AGGREGATOR, "SKETCHES of two sites", st.got("SKETCHES", ROUND, SECOND, VICTIM))
    st.gate(not a.has("sent", "ASSIGNMENT", ROUND), f"round {ROUND}'s ASSIGNMENT is out")
    return a


def _aggregator_assignment(st: Steer) -> RoleProc:
    """Everyone frozen before the ASSIGNMENT can be answered: SECOND and VICTIM wait for it; the aggregator
    is frozen while HELD sends its SKETCHES, and HELD is frozen before the aggregator (continued) answers.
    Should HELD's SKETCHES not have left its process when it was frozen, the aggregator goes on without it
    after round_s: ASSIGNMENT is then out to the two others, which is the same phase."""
    st.hold_before_sketches(HELD)
    st.wait("SKETCHES of two sites", st.got("SKETCHES", ROUND, SECOND, VICTIM))
    for name in (SECOND, VICTIM):
        st.gate(not st.freeze(name).has("received", "ASSIGNMENT", ROUND), f"{name} got its ASSIGNMENT")
    st.freeze(AGGREGATOR)
    st.thaw(HELD)
    st.freeze_when(HELD, f"{HELD} to send its SKETCHES", lambda: st.procs[HELD].has("sent", "SKETCHES", ROUND))
    st.thaw(AGGREGATOR)

    def assigned() -> bool:
        sketched = {r["peer"] for r in st.agg.rows("received", "SKETCHES", ROUND)}
        return sketched <= {r["peer"] for r in st.agg.rows("sent", "ASSIGNMENT", ROUND)}

    a = st.freeze_when(AGGREGATOR, "ASSIGNMENT to every site that sent SKETCHES", assigned, timeout=150)
    st.gate(not a.has("received", "UPDATE", ROUND), "an UPDATE arrived before the stop")
    return a


def _aggregator_update(st: Steer) -> RoleProc:
    _update_open(st)
    a = st.freeze_when(AGGREGATOR, "UPDATEs of two sites", st.got("UPDATE", ROUND, SECOND, VICTIM))
    st.gate(not a.has("received", "UPDATE", ROUND, HELD), f"{HELD}'s UPDATE is in: the round is not open")
    return a


def _aggregator_final(st: Steer) -> RoleProc:
    """Every site frozen while it evaluates its FINAL (their final evaluations are lengthened)."""
    st.may_exit = set()
    sites = (HELD, SECOND, VICTIM)
    pending = set(sites)

    def catch() -> bool:  # each site is frozen the moment its FINAL arrives
        for name in sorted(pending):
            if st.procs[name].has("received", "FINAL", st.rounds):
                st.freeze(name)
                pending.discard(name)
        return not pending

    st.wait("FINAL at every site", catch)
    for name in sites:
        st.gate(not st.procs[name].has("sent", "DONE", st.rounds), f"{name} sent DONE before it was stopped")
    a = st.freeze(AGGREGATOR)
    st.gate(not a.has("received", "DONE", st.rounds), "a DONE arrived before the stop")
    return a


def _aggregator_done(st: Steer) -> RoleProc:
    """SECOND's and VICTIM's DONEs recorded in state/final.json; HELD frozen while it evaluates its FINAL."""
    st.freeze_when(HELD, f"FINAL at {HELD}", lambda: st.procs[HELD].has("received", "FINAL", st.rounds))
    st.gate(not st.procs[HELD].has("sent", "DONE", st.rounds), f"{HELD} sent DONE before it was stopped")
    st.may_exit = {SECOND, VICTIM}
    record = st.layout.aggregator / "state" / "final.json"

    def recorded() -> bool:
        try:
            return {SECOND, VICTIM} <= set(json.loads(record.read_text())["confirmed"])
        except (OSError, ValueError, KeyError):
            return False  # not written yet (it is replaced atomically, never torn)

    a = st.freeze_when(AGGREGATOR, f"the DONEs of {SECOND} and {VICTIM} recorded in {record.name}", recorded)
    st.gate(not a.has("received", "DONE", st.rounds, HELD), f"{HELD}'s DONE arrived before the stop")
    return a


GATES: dict[tuple[str, str], Callable[[Steer], RoleProc]] = {
    ("site", "training"): _site_training,
    ("site", "sketches"): _site_sketches,
    ("site", "assignment"): _site_assignment,
    ("site", "update"): _site_update,
    ("site", "final"): _site_final,
    ("site", "done"): _site_done,
    ("aggregator", "training"): _aggregator_training,
    ("aggregator", "sketches"): _aggregator_sketches,
    ("aggregator", "assignment"): _aggregator_assignment,
    ("aggregator", "update"): _aggregator_update,
    ("aggregator", "final"): _aggregator_final,
    ("aggregator", "done"): _aggregator_done,
}


def expected_exit(sig: signal.Signals) -> int:
    """SIGTERM: the CLI's orderly stop, exit 128 + 15; SIGKILL: killed outright."""
    return 128 + sig if sig == signal.SIGTERM else -sig
