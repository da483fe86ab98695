"""Bookkeeping of one protocol phase on the aggregator: who was asked, who answered, what came late.

A phase is "I sent kind X for round r to these sites; I wait for kind Y".
Answers are accepted once per site, only from the sites asked, only for the
phase's round; everything else (late, duplicate, unexpected) is counted and
ignored, never acted on.  The message each site was sent is kept so a site
that reconnects and says (in its JOIN) it never handled it gets it again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fltac_secure.errors import ProtocolError
from fltac_secure.federation import messages as fm
from fltac_secure.federation.console import EventLog
from fltac_secure.federation.rounds import slot_key
from fltac_secure.plan import Plan
from fltac_secure.transport.envelope import Message


@dataclass
class Member:
    """A collaborator known to this run: slot sample counts, task names (if shared), last handled message,
    label count per slot (``compression.trim_head`` only)."""

    name: str
    counts: list[int]
    tasks: list[str] | None = None
    last: tuple[int, str] = (-1, "")
    labels: list[int] | None = None

    @property
    def slots(self) -> int:
        return len(self.counts)


@dataclass
class Phase:
    """One round phase: ``sent`` (kind) for ``round``, answered by ``answer`` (kind)."""

    round: int
    sent: str
    answer: str
    messages: dict[str, Message] = field(default_factory=dict)  # site -> the message it was sent
    answers: dict[str, Any] = field(default_factory=dict)  # site -> parsed answer
    ignored: int = 0

    @property
    def expected(self) -> set[str]:
        return set(self.messages)

    @property
    def complete(self) -> bool:
        return set(self.answers) >= self.expected

    def wants(self, site: str, msg: Message) -> bool:
        """True for the first answer of the right kind and round from a site that was asked."""
        return msg.kind == self.answer and msg.round == self.round and site in self.messages and site not in self.answers

    def accept(self, site: str, answer: Any) -> None:
        """Record a wanted answer (see ``wants``)."""
        self.answers[site] = answer

    def needs_resend(self, site: str, member: Member) -> bool:
        """A site asked in this phase, not answered, whose process restarted (it has handled nothing yet).

        Only a restart loses a request: within one aggregator run the transport
        redelivers unacknowledged messages itself, and resending to a site
        that merely has the request in flight would duplicate traffic.
        """
        return site in self.messages and site not in self.answers and member.last == (-1, "")

    def answered_in(self, order: list[str]) -> list[str]:
        """Sites that answered, in roster order (the order the algorithm sees them)."""
        return [s for s in order if s in self.answers]


NOT_CONNECTED = "not connected"
NO_SKETCHES = "no SKETCHES in time"
NO_UPDATE = "no UPDATE in time"


def missed_reasons(roster: list[str], participants: list[str], sketched: list[str],
                   updated: list[str]) -> dict[str, str]:
    """Why each roster site not in ``updated`` missed the round: the first phase it dropped out of."""
    out = {}
    for s in roster:
        if s not in updated:
            out[s] = NOT_CONNECTED if s not in participants else NO_SKETCHES if s not in sketched else NO_UPDATE
    return out


def join_of(msg: Message, share_task_names: bool, label_counts: list[int] | None = None) -> Member:
    j = fm.parse_join(msg, share_task_names=share_task_names, label_counts=label_counts)
    return Member(msg.sender, j.counts, j.tasks, (j.last_round, j.last_kind), j.labels)


def admit_join(peer: str, msg: Message, plan: Plan, known: Member | None, label_counts: list[int] | None,
               log: EventLog) -> Member | None:
    """The member a JOIN announces, or None (logged) if it is refused: malformed, more slots than the plan
    has tasks, or a site that changes its slots or label counts (a site keeps its tasks for the whole
    federation)."""
    try:
        member = join_of(msg, plan.privacy.share_task_names, label_counts)
    except ProtocolError as exc:
        log.warn(f"refused JOIN from {peer}: {exc}")
        return None
    if member.slots > len(plan.tasks):
        log.warn(f"refused JOIN from {peer}: {member.slots} task slots, the plan has {len(plan.tasks)} tasks")
        return None
    if known is not None and known.slots != member.slots:
        log.error(f"{peer} now announces {member.slots} task slots instead of {known.slots}; ignoring it "
                  "(a site keeps its tasks for the whole federation)")
        return None
    if known is not None and known.labels != member.labels:
        log.error(f"{peer} now announces label counts {member.labels} instead of {known.labels}; ignoring "
                  "it (a site keeps its tasks for the whole federation)")
        return None
    return member


def collect_sketches(phase: Phase, sites: list[str]) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Sketches and counts keyed by slot, in roster then slot order (the simulator's order)."""
    sketches: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for s in sites:
        sk, cn = phase.answers[s]
        for i in sorted(sk):
            sketches[slot_key(s, i)] = np.asarray(sk[i], dtype=np.float64)
            counts[slot_key(s, i)] = cn[i]
    return sketches, counts
