"""The aggregator role: the FL-TAC round state machine over the transport.

One round::

    ROUND_START -> (sites train) -> SKETCHES -> server_assign -> ASSIGNMENT
                -> UPDATE -> server_aggregate -> atomic checkpoint -> next round

All of the algorithm is in ``fltac_secure.federation.rounds`` (the functions
the simulator calls); this class only moves messages, keeps time and stores.

Quorum and timeouts: at start (and after a restart) the aggregator waits up
to ``timeouts.join_s`` for every expected site, then goes on with a quorum;
a site that joins later takes part from the round in progress.  Each phase
waits at most ``timeouts.round_s`` and proceeds with whoever answered in
time; late, duplicate and unexpected answers are logged, counted in the
round's metrics and ignored.  Each round's metrics name every roster site
that missed it and why (``phases.missed_reasons``).  A phase with fewer
than ``quorum.min_collaborators`` answers fails the round; the round is
retried (same round number, same seeds, with whoever is connected)
up to ``MAX_ATTEMPTS`` times in all, then the run stops with a clear error
and an ABORT to the sites.  The checkpoint of the last completed round is
intact, so ``fltac aggregator start`` resumes from there.  The final phase
(outputs, FINAL, confirmations) is in ``aggregator.final``; a restart after
the last round resumes there, without waiting for joins here.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from aggregator.checkpoint import Checkpoint, CheckpointStore
from aggregator.final import FinalPhase, finish, on_join
from aggregator.phases import Member, Phase, admit_join, collect_sketches, missed_reasons
from aggregator.wire import MemberWires
from fltac_secure.errors import CompressionError, FltacError, ProtocolError, StateError
from fltac_secure.federation import messages as fm
from fltac_secure.federation import secure_messages as sm
from fltac_secure.federation.compressed import keep_exact, new_rounding_key
from fltac_secure.federation.console import EventLog
from fltac_secure.federation.ledger import LEDGER_NAME, Ledger
from fltac_secure.federation.rounds import (
    Assignment,
    ServerState,
    crowded_warning,
    server_aggregate,
    server_assign,
    slot_key,
)
from fltac_secure.federation.sizes import record_model_facts
from fltac_secure.federation.storage import append_jsonl, pin_plan
from fltac_secure.learning.cluster import ClusterResult
from fltac_secure.pki.crl import CrlWatch
from fltac_secure.plan import Plan, Site, plan_hash, section_hashes
from fltac_secure.transport.envelope import NACK, Message
from fltac_secure.transport.server import TransportServer

if TYPE_CHECKING:
    from aggregator.secure import SecureUpdate

MAX_ATTEMPTS = 3
"""Tries per round (the first and two retries) before the run stops."""


class SimulatedCrash(RuntimeError):
    """Raised by the test hook ``Faults.crash_after_round``: the process 'dies' right after a checkpoint."""


@dataclass
class Faults:
    """Test hooks (never set in production): stop abruptly after the checkpoint of a round,
    or once FINAL went out to that many sites."""

    crash_after_round: int | None = None
    crash_after_final: int | None = None
    rounding_key: bytes | None = None
    """compression.download_bits: this key instead of a random one at round 0 (to compare with the simulator)."""


@dataclass
class RoundReport:
    round: int
    attempt: int
    participants: list[str]
    sketched: list[str]
    updated: list[str]
    clusters: dict[str, int]
    ignored: int
    seconds: float
    missed: dict[str, str] = field(default_factory=dict)  # roster site -> why it did not take part
    extra: dict[str, Any] = field(default_factory=dict)


def _on_sighup(action: Callable[[], None]) -> Callable[[], None]:
    """Run ``action`` on SIGHUP while the aggregator runs (main thread only); returns the undo."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGHUP"):
        return lambda: None
    def handler(*_: object) -> None:
        try:
            action()
        except FltacError:
            pass  # the transport has failed; the main loop reports that

    previous = signal.signal(signal.SIGHUP, handler)
    return lambda: signal.signal(signal.SIGHUP, previous)


class Aggregator:
    """Runs the federation of ``plan`` from the aggregator's ``site`` file (bind address, certificates)."""

    def __init__(self, plan: Plan, site: Site, *, log: EventLog | None = None, join_window: float | None = None,
                 faults: Faults | None = None) -> None:
        from fltac_secure.learning.adapters import adapter_layout

        if site.role != "aggregator":
            raise StateError(f"site file for {site.name!r} has role {site.role}; `fltac aggregator start` needs role aggregator")
        self.plan, self.site, self.hash = plan, site, plan_hash(plan)
        self.workspace = Path(site.workspace)
        self.log = log or EventLog(site.name)
        self.join_window = float(join_window if join_window is not None else plan.timeouts.join)
        self.faults = faults or Faults()
        self.shapes = fm.plan_shapes(plan, adapter_layout(plan).size)
        self.wires = MemberWires(plan, self.shapes.vector_size)  # compression.trim_head: what travels per slot
        self.store = CheckpointStore(self.workspace, self.hash, plan, vector_size=self.shapes.vector_size, log=self.log)
        self.members: dict[str, Member] = {}
        self.joined: set[str] = set()
        self.phase: Phase | None = None
        self.history: list[dict[str, Any]] = []
        self.server: TransportServer | None = None
        self.endpoint: str | None = None
        self.on_round: Callable[[RoundReport], None] | None = None
        self.secure: SecureUpdate | None = None  # the secure UPDATE in progress, if any

    # -- lifecycle ---------------------------------------------------------------
    def run(self) -> ServerState:
        """Serve every remaining round, then hand out the final adapters; returns the final state."""
        from fltac_secure.pki import context_for_site

        t, certs = self.plan.timeouts, self.site.certs
        assert certs.crl is not None  # context_for_site refuses an aggregator site file without one
        crl_watch = CrlWatch(certs.crl, certs.ca, lambda: context_for_site(self.site))
        self.server = TransportServer(
            self.site.bind or "", context_for_site(self.site), self.plan.roster, self.plan.federation, self.hash,
            name=self.site.name,
            max_message_bytes=fm.message_limit(self.plan.limits.max_message_mb, self.shapes, len(self.plan.tasks)),
            handshake_timeout=t.handshake_s, idle_timeout=t.idle_s, session_lifetime=t.rehandshake_s,
            ledger_hook=Ledger(self.workspace / LEDGER_NAME, self.site.name), crl_watch=crl_watch,
            plan_sections=section_hashes(self.plan),
        ).start()  # fmt: skip  # bind first: an address in use fails at once, before anything is written
        self.endpoint = self.server.endpoint
        restore = _on_sighup(self.server.reload_crl)
        try:
            pin_plan(self.workspace, self.plan)
            record_model_facts(self.workspace, self.plan)  # what `fltac audit` reads instead of loading the model
            state = self._load_or_init()
            self.log.info(f"listening on {self.endpoint} for federation {self.plan.federation!r} "
                          f"(plan {self.hash[:12]}, {len(self.plan.roster)} sites, rounds {state.round}/{self.plan.rounds}); "
                          f"CRL {certs.crl} is re-read when it changes or on SIGHUP")
            state = self._serve(state)
        finally:
            restore()
            self.server.close()
        return state

    def _load_or_init(self) -> ServerState:
        self.store.remove_stale_temps()
        if self.store.exists:
            ckpt = self.store.load()
            self.members = {s: Member(s, c, ckpt.tasks.get(s), labels=ckpt.labels.get(s))
                            for s, c in ckpt.members.items()}
            self.history = ckpt.history
            self.log.info(f"resuming from checkpoint: round {ckpt.state.round} of {self.plan.rounds}")
            return ckpt.state
        key = self.faults.rounding_key if self.faults.rounding_key is not None else new_rounding_key(self.plan)
        return ServerState(round=0, k=self.plan.k, vectors={}, rounding_key=key if self.plan.compression.download else None)

    def _serve(self, state: ServerState) -> ServerState:
        if state.round < self.plan.rounds:  # after the last round, the final phase waits for sites itself
            self._await_joins(set(self.members) or set(self.plan.roster), self.join_window)
        while state.round < self.plan.rounds:
            state = self._round_with_retries(state)
            if self.faults.crash_after_round == state.round - 1:
                raise SimulatedCrash(f"test hook: aggregator stops after round {state.round - 1}")
        finish(self, state)
        return state

    # -- message pump ------------------------------------------------------------
    def _pump(self, done: Callable[[], bool], deadline: float) -> None:
        """Handle incoming messages until ``done()`` or the deadline."""
        assert self.server is not None
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            item = self.server.recv(timeout=min(left, 0.5))
            if item is not None:
                self._handle(*item)

    def _drain(self) -> None:
        """Handle whatever already arrived (JOINs of sites that came back), without waiting."""
        assert self.server is not None
        while (item := self.server.recv(timeout=0)) is not None:
            self._handle(*item)

    def _handle(self, peer: str, msg: Message) -> None:
        if msg.kind == fm.JOIN:
            self._on_join(peer, msg)
            return
        phase = self.phase
        if phase is not None and phase.wants(peer, msg):
            try:
                phase.accept(peer, self._parse_answer(peer, msg))
            except ProtocolError as exc:
                self.log.warn(f"refused {msg.kind} from {peer}: {exc}")
            return
        if msg.kind == NACK:
            self.log.warn(f"{peer} refused a message: {msg.meta.get('detail', '')}")
            return
        if phase is not None:
            phase.ignored += 1
        self.log.warn(f"ignored {msg.kind} (round {msg.round}) from {peer}: late, duplicate or unexpected")

    def _parse_answer(self, peer: str, msg: Message) -> Any:
        member = self.members[peer]
        if msg.kind == fm.SKETCHES:
            return fm.parse_sketches(msg, member.slots, self.shapes)
        if self.secure is not None and msg.kind in sm.KINDS:
            return self.secure.parse(peer, msg)
        if msg.kind == fm.UPDATE:
            assert self.phase is not None
            wanted = [i for i, c in enumerate(self.phase.messages[peer].meta["clusters"]) if c >= 0]
            return self.wires.parse_update(msg, member, wanted, self.shapes)
        return True  # DONE

    def _on_join(self, peer: str, msg: Message) -> None:
        member = admit_join(peer, msg, self.plan, self.members.get(peer), self.wires.label_counts, self.log)
        if member is None:
            return
        if peer not in self.joined:
            self.log.good(f"{peer} joined with {member.slots} task slot(s)")
        self.members[peer], self.joined = member, self.joined | {peer}
        phase = self.phase
        if isinstance(phase, FinalPhase):
            on_join(self, phase, peer, member)
        elif phase is not None and phase.needs_resend(peer, member):
            self.log.info(f"re-sending {phase.sent} of round {phase.round} to {peer}")
            self._send(peer, phase.messages[peer], phase)

    def _send(self, peer: str, msg: Message, phase: Phase) -> None:
        assert self.server is not None
        phase.messages[peer] = msg
        self.server.send(peer, msg)

    def _await_joins(self, wanted: set[str], window: float) -> None:
        """Wait for every site in ``wanted`` (up to ``window``, the join window), then for a quorum (round_s more)."""
        quorum = self.plan.quorum.min_collaborators
        self.log.info(f"waiting for sites to join (quorum {quorum})")
        self._pump(lambda: self.joined >= wanted, time.monotonic() + window)
        if len(self.joined) < quorum:
            self._pump(lambda: len(self.joined) >= quorum, time.monotonic() + self.plan.timeouts.round_s)
        if len(self.joined) < quorum:
            raise self._stop(f"only {len(self.joined)} site(s) joined, fewer than quorum.min_collaborators = {quorum}")

    def _stop(self, why: str) -> StateError:
        """Tell every site the run stopped, and build the error the CLI prints."""
        assert self.server is not None
        for peer in sorted(self.joined):
            self.server.send(peer, self.server.message(fm.ABORT, meta={"reason": why}))
        time.sleep(0.5)  # let the ABORTs go out
        self.log.error(f"stopping: {why}")
        return StateError(f"the federation stopped: {why}; the last completed round is checkpointed in "
                          f"{self.store.dir}, so `fltac aggregator start` resumes from it")

    # -- one round -----------------------------------------------------------------
    def _participants(self) -> list[str]:
        assert self.server is not None
        connected = set(self.server.peers())
        return [s for s in self.plan.roster if s in self.joined and s in connected]

    def _round_with_retries(self, state: ServerState) -> ServerState:
        quorum = self.plan.quorum.min_collaborators
        why = ""
        for attempt in range(1, MAX_ATTEMPTS + 1):
            started = time.monotonic()
            result = self._round(state, attempt)
            if isinstance(result, ServerState):
                return result
            why = result
            self.log.warn(f"round {state.round} attempt {attempt}/{MAX_ATTEMPTS} failed: {why}")
            if attempt < MAX_ATTEMPTS:
                self._pump(lambda: len(self._participants()) >= quorum, started + self.plan.timeouts.round_s)
        raise self._stop(f"round {state.round} failed {MAX_ATTEMPTS} times ({why})")

    def _round(self, state: ServerState, attempt: int) -> ServerState | str:
        """One try of a round: the new state, or why it failed."""
        r, quorum, started = state.round, self.plan.quorum.min_collaborators, time.monotonic()
        self.phase = None
        self._drain()
        parts = self._participants()
        if len(parts) < quorum:
            return f"{len(parts)} site(s) connected, quorum is {quorum}"
        self._ensure_slots(state, parts)
        exact, state = state, self.wires.started(state, self.members)  # download_bits: the rounded starts
        self.log.info(f"round {r}: ROUND_START to {len(parts)} site(s): {', '.join(parts)}")
        sketch_phase = self._broadcast(parts, fm.ROUND_START, fm.SKETCHES, r,
                                       lambda s: self._start_message(state, s, r))
        sketched = sketch_phase.answered_in(self.plan.roster)
        if len(sketched) < quorum:
            return f"{len(sketched)} site(s) sent sketches within {self.plan.timeouts.round_s:g} s, quorum is {quorum}"
        sketches, counts = collect_sketches(sketch_phase, sketched)
        assignment = server_assign(state, sketches, self.plan,
                                   label_counts=self.wires.head_rows(self.members, sketches))
        moved = (f" ({assignment.clusters.moved} slot(s) moved so that a site's slots sit in distinct clusters)"
                 if assignment.clusters.moved else "")
        sep = assignment.clusters.separation
        self.log.info(f"round {r}: clustered {len(sketches)} slot sketches into "
                      f"{len(set(assignment.labels.values()))} cluster(s){moved}, separation "
                      f"{'n/a' if sep is None else f'{sep:.2f}'}{' (previous clusters kept)' if assignment.clusters.kept else ''}"
                      "; ASSIGNMENT out")
        if assignment.clusters.crowded:
            self.log.warn(crowded_warning(r, assignment.clusters.crowded, list(sketches), self.plan.k))
        if self.plan.secure_aggregation.enabled:
            from aggregator.secure import secure_round

            outcome = secure_round(self, state, assignment, counts, sketched)
            if isinstance(outcome, str):
                return outcome
            new, extra = outcome
            updated, ignored = extra.pop("updated"), sketch_phase.ignored + extra.pop("ignored")
            labels = new.clusters.labels if new.clusters else {}
        else:
            update_phase = self._broadcast(sketched, fm.ASSIGNMENT, fm.UPDATE, r,
                                           lambda s: self._assignment_message(assignment, s, r))
            updated = update_phase.answered_in(self.plan.roster)
            if self.plan.compression.enabled:  # quantised updates: added to the start this aggregator sent
                updated = self._rebuild(state, update_phase, updated)
            if len(updated) < quorum:
                return f"{len(updated)} site(s) sent updates within {self.plan.timeouts.round_s:g} s, quorum is {quorum}"
            vectors = {slot_key(s, i): v for s in updated for i, v in update_phase.answers[s].items()}
            sub = Assignment(r, ClusterResult(k=assignment.clusters.k,
                                              labels={k: assignment.labels[k] for k in vectors},
                                              centroids=assignment.clusters.centroids))
            new = server_aggregate(state, sub, vectors, {k: counts[k] for k in vectors}, self.plan,
                                   head_rows=self.wires.head_rows(self.members, sub.labels))
            extra, ignored, labels = {}, sketch_phase.ignored + update_phase.ignored, dict(sub.labels)
        extra = {**extra, "separation": sep, "kept_clusters": assignment.clusters.kept}
        if self.plan.compression.download:  # the exact means are kept; slots that sat out keep their exact vector
            new = keep_exact(new, state, exact)
        report = RoundReport(r, attempt, parts, sketched, updated, dict(labels), ignored, time.monotonic() - started,
                             missed_reasons(self.plan.roster, parts, sketched, updated), extra)
        self._commit(new, report, sketches)
        return new

    def _rebuild(self, state: ServerState, phase: Phase, sites: list[str]) -> list[str]:
        """Replace each site's quantised updates by start + update in ``phase.answers``; drop a site whose don't fit."""
        kept = []
        for s in sites:
            try:
                updates = phase.answers[s]
                phase.answers[s] = self.wires.rebuild(self.members[s], {i: state.vectors[slot_key(s, i)]
                                                                         for i in updates}, updates)
                kept.append(s)
            except CompressionError as exc:
                self.log.warn(f"round {phase.round}: refused the UPDATE of {s}: {exc}")
        return kept

    def _broadcast(self, sites: list[str], kind: str, answer: str, r: int,
                   build: Callable[[str], Message]) -> Phase:
        assert self.server is not None
        phase = Phase(r, kind, answer)
        self.phase = phase
        for s in sites:
            self._send(s, build(s), phase)
        self._pump(lambda: phase.complete, time.monotonic() + self.plan.timeouts.round_s)
        late = sorted(phase.expected - set(phase.answers))
        if late:
            self.log.warn(f"round {r}: no {answer} from {', '.join(late)} within {self.plan.timeouts.round_s:g} s; "
                          "going on without them")
        return phase

    def _ensure_slots(self, state: ServerState, sites: list[str]) -> None:
        """Slots seen for the first time start from round 0's common initial adapter."""
        from fltac_secure.learning.adapters import initial_vector

        init: np.ndarray | None = None
        for s in sites:
            for i in range(self.members[s].slots):
                if slot_key(s, i) not in state.vectors:
                    init = initial_vector(self.plan, self.plan.training.seed) if init is None else init
                    state.vectors[slot_key(s, i)] = init.copy()

    def _start_message(self, state: ServerState, site: str, r: int) -> Message:
        assert self.server is not None
        n = self.members[site].slots
        own = {i: state.own[slot_key(site, i)] for i in range(n) if slot_key(site, i) in state.own}
        header, tensors = self.wires.start_parts(self.members[site], state, site)
        return self.server.message(fm.ROUND_START, round=r, meta={**sm.own_meta(own), **header}, tensors=tensors)

    def _assignment_message(self, assignment: Assignment, site: str, r: int) -> Message:
        assert self.server is not None
        clusters = [assignment.labels.get(slot_key(site, i), -1) for i in range(self.members[site].slots)]
        return self.server.message(fm.ASSIGNMENT, round=r, meta={"clusters": clusters})

    def _commit(self, new: ServerState, report: RoundReport, sketches: dict[str, np.ndarray]) -> None:
        from aggregator.outputs import record_round

        row = {"round": report.round, "attempt": report.attempt, "participants": report.participants,
               "sketched": report.sketched, "updated": report.updated, "clusters": report.clusters,
               "missed": report.missed, "ignored_messages": report.ignored, "seconds": round(report.seconds, 3),
               **report.extra}
        self.history.append(row)
        members = {s: m.counts for s, m in self.members.items()}
        tasks = {s: m.tasks for s, m in self.members.items() if m.tasks}
        labels = {s: m.labels for s, m in self.members.items() if m.labels is not None}
        self.store.save(Checkpoint(new, members, tasks, self.history, labels))
        append_jsonl(self.workspace / "out" / "metrics.jsonl", row)
        record_round(self.workspace, report.round, sketches, report.clusters)
        for site, why in report.missed.items():
            self.log.warn(f"round {report.round}: {site} did not take part ({why})")
        sizes = sorted(np.bincount(list(report.clusters.values())).tolist(), reverse=True)
        self.log.good(f"round {report.round} done in {report.seconds:.1f} s: {len(report.updated)} site(s), "
                      f"cluster sizes {sizes}; checkpoint saved")
        if self.on_round is not None:
            self.on_round(report)
