"""This site's part of secure aggregation: the member's state machine, one run at a time, in memory only.

On a secure ASSIGNMENT the site builds one ``ClientSession`` per cluster it
is in (fresh keys and seeds, its slots' trained vectors from the round cache)
and answers SA_KEYS; each later stage message is answered for every cluster
it carries. Every check of the protocol (signatures against this site's CA
copy, roster and CRL; its own keys unchanged; shares that decrypt; the
survivor set; the one-share rule) runs in ``fltac_secure.secagg.client``;
a failed check stops the site with an error that names it, because it means
the aggregator (or a member) is not following the protocol. One check only
leaves the cluster it concerns (the site's other clusters go on):
``lonely_rows``, a head row that would be summed over fewer than
``min_cluster_size`` members (its width, the largest label count of its
slots there, is signed into its advert). So does a setup
whose vector length is not the one the plan and this site's own slots imply
(``bad_length``; with compression.trim_head: the wire size at a ``K_c`` of
the plan's label counts, at least this site's own count; its inputs are its
slots' wire parts widened to ``K_c`` with zeros). Secrets never
touch the disk: a restarted site has none and simply drops out of that run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from fltac_secure.errors import SecAggError, StateError
from fltac_secure.federation import secure_messages as sm
from fltac_secure.federation.secure_round import widen
from fltac_secure.learning.aggregate import slot_weights
from fltac_secure.secagg import ClientSession, Context, PeerVerifier, Setup, Signer, ring_for, threshold_for
from fltac_secure.transport.envelope import Message

if TYPE_CHECKING:
    from collaborator.service import Collaborator

_PARSE = {sm.SA_KEYBOOK: lambda msg, me: sm.parse_keybook(msg), sm.SA_DELIVERY: sm.parse_delivery,
          sm.SA_SURVIVORS: lambda msg, me: sm.parse_survivors(msg), sm.SA_UNMASK: lambda msg, me: sm.parse_unmask(msg)}
_PARTS = {sm.SA_SHARES: sm.shares_parts, sm.SA_MASKED: sm.masked_parts, sm.SA_CONSISTENCY: sm.consistency_parts,
          sm.SA_REVEAL: sm.reveal_parts}  # fmt: skip


class SecureSide:
    """The member side for ``collab``'s site."""

    def __init__(self, collab: Collaborator) -> None:
        certs = collab.site.certs
        self.c = collab
        self.signer = Signer.from_files(collab.site.name, certs.cert, certs.key)
        self.run: tuple[int, int] | None = None  # (round, attempt) of the sessions below
        self.sessions: dict[int, ClientSession] = {}
        if certs.crl is None:
            collab.log.warn("no CRL in the site file: secure aggregation cannot refuse keys of revoked sites; "
                            "add certs.crl (the CA's crl.pem)")  # fmt: skip

    def _verifier(self) -> PeerVerifier:
        certs = self.c.site.certs
        return PeerVerifier.from_files(certs.ca, self.c.plan.roster, certs.crl)  # re-read per run: new revocations

    def _abandon(self, r: int, exc: SecAggError) -> bool:
        """A member revoked after the aggregator built this run (the CRLs were read a moment apart): leave this
        run (nothing revealed, the protocol goes on without this site) instead of stopping the site."""
        if exc.reason != "revoked":
            return False
        self.sessions, self.run = {}, None
        self.c.log.warn(f"round {r}: left this secure aggregation run: {exc}")
        return True

    def _leave(self, r: int, c: int, exc: SecAggError) -> None:
        """A cluster whose sum would reveal a head row (``lonely_rows``): leave that cluster only (no further
        answer for it, so nothing of this site is summed or unmasked there); the others go on. Its slots there
        count as dropped: the aggregator keeps their previous vectors."""
        del self.sessions[c]
        self.c.log.warn(f"round {r}: left secure aggregation in cluster {c} ({exc.reason}): {exc}")

    def _fail(self, r: int, exc: SecAggError) -> StateError:
        self.sessions, self.run = {}, None
        self.c.log.error(f"round {r}: secure aggregation check failed: {exc}")
        return StateError(
            f"secure aggregation check failed in round {r} ({exc.reason}): {exc}; this site stopped rather than "
            "reveal anything: the aggregator or a member is not following the protocol"
        )

    def on_assignment(self, msg: Message, clusters: list[int], vectors: dict[int, Any], counts: dict[int, int]) -> None:
        """Start a run: one session per summed cluster this site is in; send SA_KEYS."""
        plan, r = self.c.plan, msg.round
        attempt, setups, skipped = sm.parse_assignment_setup(msg)
        mine = {c for c in clusters if c >= 0}
        if set(setups) | set(skipped) != mine:
            raise self._fail(r, SecAggError(f"the setup names clusters {sorted(set(setups) | set(skipped))}, the "
                                            f"assignment {sorted(mine)}", "bad_setup"))  # fmt: skip
        self.sessions, self.run = {}, (r, attempt)
        if skipped:
            self.c.log.info(f"round {r}: cluster(s) {skipped} not securely summed; keeping this site's own adapters")
        if not setups:
            return
        weights = slot_weights({str(i): counts[i] for i in vectors}, plan.aggregation.weighting)
        verifier = self._verifier()
        sa, ring = plan.secure_aggregation, ring_for(plan)
        try:
            for c, (members, member_weights, length) in setups.items():
                if len(members) < sa.min_cluster_size:
                    raise SecAggError(f"cluster {c} has {len(members)} member(s), fewer than the plan's "
                                      f"min_cluster_size {sa.min_cluster_size}", "bad_setup")  # fmt: skip
                idx = [i for i, cl in enumerate(clusters) if cl == c and i in vectors]
                inputs = self._inputs(c, length, idx, vectors)
                setup = Setup(Context(self.c.hash, r, attempt, c), members, member_weights,
                              threshold_for(len(members), sa.threshold), ring, length)  # fmt: skip
                width = max((plan.task(self.c.ws.tasks[i]).num_labels for i in idx), default=1)
                self.sessions[c] = ClientSession(setup, self.signer, verifier, inputs, [weights[str(i)] for i in idx],
                                                 width=width, min_cluster_size=sa.min_cluster_size,
                                                 rng=self.c.faults.quantise_rng)  # fmt: skip
            adverts = {c: s.advertise() for c, s in self.sessions.items()}
        except SecAggError as exc:
            raise self._fail(r, exc) from exc
        clipped = sum(s.clipped for s in self.sessions.values())
        if clipped:
            what = ("update value(s) beyond +-{} (compression.secure_clip)".format(ring.clip)
                    if plan.compression.enabled else f"adapter value(s) beyond +-{sa.clip}")
            self.c.log.warn(f"round {r}: {clipped} {what} were clipped for the secure sum")
        self.c._send(sm.SA_KEYS, r, **sm.keys_parts(attempt, adverts))
        self.c.log.info(f"round {r}: secure aggregation in cluster(s) {sorted(self.sessions)}; keys sent")

    def _inputs(self, c: int, length: int, idx: list[int], vectors: dict[int, Any]) -> list[np.ndarray]:
        """This site's inputs to cluster ``c`` at the announced ``length``, after checking it (SecAggError
        ``bad_length``): the plan's vector size, or with trim_head the wire size at some ``K_c`` of the plan's
        label counts that is at least every one of this site's slots' counts in ``c``.  A wrong length would
        cut this site's head rows or misalign its entries against the other members'."""
        wire, plan = self.c.ws.wire, self.c.plan
        if wire.trimmer is None:
            if length != self.c.shapes.vector_size:
                raise SecAggError(f"cluster {c}: the setup announces vectors of {length} numbers, the plan's adapter "
                                  f"has {self.c.shapes.vector_size}", "bad_length")  # fmt: skip
            return [vectors[i] for i in idx]
        widths = {wire.trimmer.size(k): k for k in sorted({t.num_labels for t in plan.tasks})}
        k_c = widths.get(length)
        if k_c is None:
            raise SecAggError(f"cluster {c}: the setup announces vectors of {length} numbers, the wire size of no "
                              f"label count in the plan ({', '.join(f'{n} for {k}' for n, k in widths.items())})",
                              "bad_length")  # fmt: skip
        mine = max((wire.labels[i] for i in idx), default=0)
        if mine > k_c:
            raise SecAggError(f"cluster {c}: the setup is {k_c} head rows wide ({length} numbers), but this site's "
                              f"slot there uses {mine}; its rows would be cut", "bad_length")  # fmt: skip
        return [widen(wire.trimmer, vectors[i], wire.labels[i], k_c) for i in idx]

    def on_stage(self, msg: Message) -> None:
        """Answer one stage message of the current run for every cluster it carries."""
        r = msg.round
        if self.run != (r, sm.attempt_of(msg)):
            self.c.log.warn(f"ignored {msg.kind} of round {r}: not the secure aggregation run this site is in")
            return
        records = _PARSE[msg.kind](msg, self.c.site.name)
        unknown = sorted(set(records) - set(self.sessions))
        replies = {}
        try:
            if unknown:
                raise SecAggError(f"{msg.kind} names cluster(s) {unknown} this site is not summing in", "bad_message")
            for c, rec in records.items():
                try:
                    replies[c] = self.sessions[c].handle(rec)
                except SecAggError as exc:
                    if exc.reason != "lonely_rows":
                        raise
                    self._leave(r, c, exc)
        except SecAggError as exc:
            if self._abandon(r, exc):
                return
            raise self._fail(r, exc) from exc
        answer = sm.ANSWER[msg.kind]
        if answer == sm.SA_MASKED:
            parts = sm.masked_parts(self.run[1], replies, ring_for(self.c.plan))
        else:
            parts = _PARTS[answer](self.run[1], replies)
        self.c._send(answer, r, **parts)
        if answer == sm.SA_REVEAL:
            self.c.log.info(f"round {r}: unmasking shares sent for cluster(s) {sorted(replies)}")
            self.sessions = {c: s for c, s in self.sessions.items() if c not in replies}
