"""The aggregator's UPDATE phase under secure aggregation: relay the protocol, never hold an adapter.

Five exchanges follow the assignment, each one message per site carrying its
part for every cluster it is in (``federation.secure_messages``)::

    ASSIGNMENT (setups) -> SA_KEYS -> SA_KEYBOOK -> SA_SHARES -> SA_DELIVERY -> SA_MASKED
      -> SA_SURVIVORS -> SA_CONSISTENCY -> SA_UNMASK -> SA_REVEAL

With ``compression.trim_head`` each cluster's setup announces its length:
the wire size at ``K_c``, the largest label count its member slots declared
in JOIN (``secure_round.plan_secure_round``); every SA_MASKED of that
cluster is parsed at that length.

Each exchange waits at most ``timeouts.round_s`` and goes on with whoever
answered; the protocol's own recovery handles a member that drops (its
pairwise masks are rebuilt from the others' shares), never a request for its
vector. Every run gets a fresh random ``attempt`` number (part of every
signature and label), and a crash or restart of the aggregator restarts the
round from ROUND_START, so the members draw fresh keys and masks: nothing is
ever reused. Only cluster sums are decoded; the checkpoint holds cluster
means and the ``own`` markers, never one site's vector.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aggregator.phases import Phase
from fltac_secure.errors import ProtocolError, SecAggError
from fltac_secure.federation import messages as fm
from fltac_secure.federation import secure_messages as sm
from fltac_secure.federation.rounds import Assignment, ServerState
from fltac_secure.federation.secure_round import SecureRound, plan_secure_round, secure_outcome, updated_sites
from fltac_secure.secagg import PeerVerifier, ServerSession
from fltac_secure.transport.envelope import Message

if TYPE_CHECKING:
    from aggregator.service import Aggregator

_STAGES: tuple[tuple[str, str, Callable[..., dict[str, Any]]], ...] = (
    (sm.SA_KEYBOOK, sm.SA_SHARES, sm.keybook_parts),
    (sm.SA_DELIVERY, sm.SA_MASKED, sm.shares_parts),
    (sm.SA_SURVIVORS, sm.SA_CONSISTENCY, sm.survivors_parts),
    (sm.SA_UNMASK, sm.SA_REVEAL, sm.unmask_parts),
)


@dataclass
class SecureUpdate:
    """One run of the protocol for every cluster of a round."""

    agg: Aggregator
    round: int
    sr: SecureRound
    attempt: int
    sessions: dict[int, ServerSession]
    expected: dict[str, set[int]] = field(default_factory=dict)  # site -> clusters of the current exchange
    ignored: int = 0
    refused: list[str] = field(default_factory=list)

    def parse(self, peer: str, msg: Message) -> dict[int, Any]:
        """An answer of the current exchange, as records per cluster (ProtocolError if malformed or stale)."""
        if sm.attempt_of(msg) != self.attempt:
            raise ProtocolError(f"{msg.kind} from {peer} belongs to another run of round {msg.round}", "stale")
        want = self.expected.get(peer, set())
        if msg.kind == sm.SA_KEYS:
            return sm.parse_keys(msg, want)
        if msg.kind == sm.SA_SHARES:
            return sm.parse_shares(msg, want)
        if msg.kind == sm.SA_MASKED:
            if not want:
                raise ProtocolError(f"no masked input expected from {peer}", "unexpected")
            ring = self.sr.setups[next(iter(want))].ring
            return sm.parse_masked(msg, want, {c: self.sr.setups[c].length for c in want}, ring)
        if msg.kind == sm.SA_CONSISTENCY:
            return sm.parse_consistency(msg, want)
        return sm.parse_reveal(msg, want)

    def _feed(self, phase: Phase) -> None:
        for site in phase.answered_in(self.agg.plan.roster):
            for c, record in phase.answers[site].items():
                try:
                    self.sessions[c].receive(site, record)
                except SecAggError as exc:
                    self.refused.append(f"{site} in cluster {c}: {exc}")
                    self.agg.log.warn(f"round {self.round}: refused {type(record).__name__} of {site} in cluster {c}: {exc}")

    def _exchange(self, out: Mapping[str, Message], answer: str, expected: Mapping[str, set[int]]) -> Phase:
        agg = self.agg
        phase = Phase(self.round, next(iter(out.values())).kind if out else answer, answer)
        agg.phase, self.expected = phase, {s: set(c) for s, c in expected.items()}
        for site, msg in out.items():
            if expected.get(site):
                agg._send(site, msg, phase)
            else:
                assert agg.server is not None
                agg.server.send(site, msg)
        agg._pump(lambda: phase.complete, time.monotonic() + agg.plan.timeouts.round_s)
        late = sorted(phase.expected - set(phase.answers))
        if late:
            agg.log.warn(f"round {self.round}: no {answer} from {', '.join(late)} within "
                         f"{agg.plan.timeouts.round_s:g} s; the protocol goes on without them")  # fmt: skip
        self.ignored += phase.ignored
        self._feed(phase)
        return phase

    def run(self, assignment_for: Callable[[str, dict[str, Any]], Message], sites: list[str]) -> dict[int, Any]:
        """All five exchanges; the per-cluster results."""
        agg = self.agg
        out = {}
        for s in sites:
            mine = {c: self.sr.setups[c] for c in self.sr.clusters_of(s)}
            skipped = [c for c, by_site in self.sr.slots.items() if s in by_site and c not in self.sr.setups]
            out[s] = assignment_for(s, sm.assignment_meta(self.attempt, mine, skipped))
        self._exchange(out, sm.SA_KEYS, {s: set(self.sr.clusters_of(s)) for s in sites})
        for kind, answer, parts in _STAGES:
            per_site: dict[str, dict[int, Any]] = {}
            for c, session in self.sessions.items():
                if session.result is None:
                    for site, record in session.advance().items():
                        per_site.setdefault(site, {})[c] = record
            assert agg.server is not None
            msgs = {s: agg.server.message(kind, round=self.round, **parts(self.attempt, recs))
                    for s, recs in per_site.items()}  # fmt: skip
            self._exchange(msgs, answer, {s: set(recs) for s, recs in per_site.items()})
        for session in self.sessions.values():
            if session.result is None:
                session.advance()
        return {c: s.result for c, s in self.sessions.items()}


def secure_round(
    agg: Aggregator, state: ServerState, assignment: Assignment, counts: Mapping[str, int], sites: list[str],
) -> tuple[ServerState, dict[str, Any]] | str:  # fmt: skip
    """The secure UPDATE of round ``state.round``: the next state and the round's report, or why it failed."""
    plan, r = agg.plan, state.round
    certs = agg.site.certs
    verifier = PeerVerifier.from_files(certs.ca, plan.roster, certs.crl)  # re-read each round: revocations count
    attempt = secrets.randbelow(2**31)
    labels = assignment.labels  # the sketched slots, i.e. those of ``sites``
    rows = agg.wires.head_rows(agg.members, labels)  # trim_head: each cluster's length at K_c, from the JOINs
    sr = plan_secure_round(plan, agg.hash, r, attempt, labels, counts, agg.shapes.vector_size, rows)
    for c, why in sr.skipped.items():
        agg.log.info(f"round {r}: cluster {c} is not securely summed ({why})")
    run = SecureUpdate(agg, r, sr, attempt, {c: ServerSession(s, verifier) for c, s in sr.setups.items()})

    def assignment_for(site: str, meta: dict[str, Any]) -> Message:
        assert agg.server is not None
        n = agg.members[site].slots
        clusters = [labels.get(f"{site}/{i}", -1) for i in range(n)]
        return agg.server.message(fm.ASSIGNMENT, round=r, meta={"clusters": clusters, **meta})

    agg.secure = run
    try:
        results = run.run(assignment_for, sites)
    finally:
        agg.secure = None
    new, report = secure_outcome(state, assignment, sr, results, updates=plan.compression.enabled)
    updated = updated_sites(report, sr)
    quorum = plan.quorum.min_collaborators
    if len(updated) < quorum:
        return f"{len(updated)} site(s) completed secure aggregation, quorum is {quorum}"
    for c, row in sorted(report.items()):
        if row["status"] == "summed":
            agg.log.info(f"round {r}: cluster {c} securely summed over {len(row['survivors'])} site(s)"
                         + (f" ({', '.join(row['dropped'])} dropped)" if row["dropped"] else ""))  # fmt: skip
        else:
            agg.log.warn(f"round {r}: cluster {c} not summed: {row['reason']}; its members keep their own adapters")
    return new, {"updated": updated, "secure": {str(c): row for c, row in report.items()}, "ignored": run.ignored,
                 "refused": run.refused}  # fmt: skip
