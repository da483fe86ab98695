"""The end of a federation: outputs from the last checkpoint, the final adapters to each site, confirmations kept.

It runs once the checkpoint's round equals ``plan.rounds``: right after the
last round, and again when an aggregator killed in this phase is started on
the same workspace (it resumes here, not in a round).

1. ``out/`` is written from the checkpoint first (idempotent: a restart
   writes the same files), so a kill from here on loses nothing.
2. FINAL goes to every site that holds slots and has not confirmed yet; a
   site confirms with DONE, and each confirmation is written at once,
   atomically, to ``state/final.json``, so a restarted aggregator sends
   FINAL only to the others.  A DONE is accepted from any such site, also
   from one this process never sent FINAL to: the transport of a site whose
   DONE went to the killed process resends it to the new one.
3. The wait is bounded: ``round_s`` for a site after it was sent FINAL, and
   ``join_s`` (the join window) for a site that has not joined this process
   to come back (then ``round_s`` from its FINAL).  Then the aggregator
   stops and lists the sites that never confirmed; the outputs do not
   depend on them.  A site whose DONE was acknowledged by the killed process
   but not yet recorded has exited: it is listed, though it holds the
   adapters.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aggregator.checkpoint import STATE_DIR
from aggregator.outputs import write_outputs
from aggregator.phases import Member, Phase
from fltac_secure.errors import StateError
from fltac_secure.federation import messages as fm
from fltac_secure.federation import secure_messages as sm
from fltac_secure.federation.rounds import ServerState, slot_key
from fltac_secure.federation.storage import read_json, write_json
from fltac_secure.transport.envelope import Message

if TYPE_CHECKING:
    from aggregator.service import Aggregator

FORMAT = "fltac-aggregator-final/1"
CONFIRMATIONS = "final.json"


class Confirmations:
    """The sites that confirmed the final adapters of round ``round``, in ``state/final.json``."""

    def __init__(self, path: Path, round: int, sites: set[str]) -> None:
        self.path, self.round, self.sites = path, round, sites

    @classmethod
    def open(cls, state_dir: Path, round: int) -> Confirmations:
        """Those already recorded (none if the file is absent); StateError if it is not ours."""
        path = Path(state_dir) / CONFIRMATIONS
        if not path.is_file():
            return cls(path, round, set())
        meta = read_json(path, "final-phase record")
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("round") != round:
            raise StateError(f"{path} is not a final-phase record ({FORMAT}) of round {round}; "
                             "remove it to send the final adapters to every site again")
        return cls(path, round, {str(s) for s in meta.get("confirmed", [])})

    def add(self, site: str) -> None:
        """Record one confirmation durably before anything else happens."""
        self.sites.add(site)
        self.save()

    def save(self, never: list[str] | None = None) -> None:
        data: dict[str, Any] = {"format": FORMAT, "round": self.round, "confirmed": sorted(self.sites)}
        if never is not None:
            data["never_confirmed"] = never
        write_json(self.path, data)


@dataclass
class FinalPhase(Phase):
    """FINAL out, DONE back: the answers are the confirmations, kept on disk as they come."""

    state: ServerState | None = None
    targets: set[str] = field(default_factory=set)  # sites expected to confirm
    book: Confirmations | None = None
    started: float = field(default_factory=time.monotonic)
    sent_at: dict[str, float] = field(default_factory=dict)

    @property
    def expected(self) -> set[str]:
        return set(self.targets)

    def wants(self, site: str, msg: Message) -> bool:
        """The first DONE of this round from a site expected to confirm, asked in this process or not."""
        return msg.kind == self.answer and msg.round == self.round and site in self.targets and site not in self.answers

    def accept(self, site: str, answer: Any) -> None:
        super().accept(site, answer)
        assert self.book is not None
        self.book.add(site)

    def should_send(self, site: str, member: Member) -> bool:
        """On a JOIN: FINAL, unless the site confirmed, already handled it (its DONE follows), or has it in flight."""
        if site in self.answers or member.last == (self.round, fm.FINAL):
            return False
        return site not in self.messages or member.last == (-1, "")

    def settled(self, now: float, join_s: float, round_s: float) -> bool:
        """True when every unconfirmed site is past its wait (see the module docstring)."""
        for site in self.targets - set(self.answers):
            sent = self.sent_at.get(site)
            if now < (sent + round_s if sent is not None else self.started + join_s):
                return False
        return True


def final_message(agg: Aggregator, phase: FinalPhase, site: str) -> Message:
    assert agg.server is not None and phase.state is not None
    st, n = phase.state, agg.members[site].slots
    labels = st.clusters.labels if st.clusters else {}
    own = {i: st.own[slot_key(site, i)] for i in range(n) if slot_key(site, i) in st.own}
    return agg.server.message(fm.FINAL, round=phase.round,
                              meta={"clusters": [labels.get(slot_key(site, i), -1) for i in range(n)],
                                    **sm.own_meta(own)},
                              tensors=agg.wires.vector_tensors(agg.members[site],
                                                               {i: st.vectors[slot_key(site, i)] for i in range(n)}))


def send_final(agg: Aggregator, phase: FinalPhase, site: str) -> None:
    from aggregator.service import SimulatedCrash

    assert phase.state is not None
    agg._ensure_slots(phase.state, [site])  # a site that took part in no round holds the initial adapter
    agg._send(site, final_message(agg, phase, site), phase)
    phase.sent_at[site] = time.monotonic()
    if agg.faults.crash_after_final == len(phase.sent_at):
        raise SimulatedCrash(f"test hook: aggregator stops after sending FINAL to {len(phase.sent_at)} site(s)")


def on_join(agg: Aggregator, phase: FinalPhase, site: str, member: Member) -> None:
    """A site (re)joined during the final phase: it is expected to confirm, and gets FINAL if it needs it."""
    phase.targets.add(site)
    if phase.should_send(site, member):
        send_final(agg, phase, site)


def finish(agg: Aggregator, state: ServerState) -> None:
    """Write the outputs, hand out the final adapters, wait (bounded) for the confirmations."""
    round_s, join_s, roster = agg.plan.timeouts.round_s, agg.join_window, agg.plan.roster
    out = write_outputs(agg.workspace, agg.plan, state, {s: m.tasks for s, m in agg.members.items()}, agg.history)
    agg.log.good(f"global adapters and metrics written to {out}")
    book = Confirmations.open(agg.workspace / STATE_DIR, state.round)
    targets = (set(agg.members) | book.sites) & set(roster)
    phase = FinalPhase(state.round, fm.FINAL, fm.DONE, state=state, targets=targets, book=book)
    phase.answers = {s: True for s in book.sites if s in targets}
    agg.phase = phase
    now = [s for s in roster if s in agg.joined and s in phase.targets and s not in phase.answers]
    later = sorted(phase.targets - set(phase.answers) - set(now))
    agg.log.info(f"all {agg.plan.rounds} rounds done; final adapters to {', '.join(now) or 'nobody yet'}"
                 + (f"; already confirmed: {', '.join(sorted(phase.answers))}" if phase.answers else "")
                 + (f"; waiting up to {join_s:g} s for {', '.join(later)} to join" if later else ""))
    for site in now:
        send_final(agg, phase, site)
    agg._pump(lambda: phase.settled(time.monotonic(), join_s, round_s), phase.started + join_s + round_s)
    never = [s for s in roster if s in phase.targets and s not in phase.answers]
    book.save(never)
    agg.log.info(f"{len(phase.answers)} of {len(phase.targets)} site(s) confirmed the final adapters")
    if never:
        agg.log.warn(f"never confirmed the final adapters: {', '.join(never)} (recorded in {book.path})")
