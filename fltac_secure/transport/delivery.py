"""Exactly-once delivery with bounded memory: one ``Mailroom`` per peer.

A mailroom keeps what the transport owes one peer and what it holds for the
application: outgoing messages until the peer acknowledges them (at most
``max_outbox``; beyond that the oldest is dropped with a warning, since the
roles resend what still matters when a peer comes back), the ids already
delivered (``SeenIds``, so a resend after a reconnect is acknowledged and
dropped), and an ``Intake`` that bounds what waits for the application.
While the intake is full, received messages are *parked* unacknowledged: a
well-behaved sender keeps a bounded window of unacknowledged messages, so it
stops; a sender that overflows the parking anyway loses its session.

The server keeps one mailroom per authenticated name, across that peer's
sessions; the client keeps one for the aggregator.  Both put ``Delivery``
items on one application queue; ``Delivery.taken`` (application thread)
frees the intake and says whether parked messages wait to be let in.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from fltac_secure.transport.envelope import Message

log = logging.getLogger(__name__)


class SeenIds:
    """The last ``capacity`` message ids seen from one peer (for exactly-once delivery)."""

    def __init__(self, capacity: int = 4096) -> None:  # resends come from a bounded outbox: far fewer
        self._ids: OrderedDict[int | str, None] = OrderedDict()
        self._capacity = capacity

    def __contains__(self, msg_id: int | str) -> bool:
        return msg_id in self._ids

    def add(self, msg_id: int | str) -> bool:
        """Record ``msg_id``; False if it was already seen (a duplicate)."""
        if msg_id in self._ids:
            return False
        self._ids[msg_id] = None
        if len(self._ids) > self._capacity:
            self._ids.popitem(last=False)
        return True


class Intake:
    """Bounded hand-over of received messages to the application, with backpressure.

    The I/O thread ``offer``s each received data message: it is delivered
    (put on the application's queue and acknowledged) while fewer than
    ``max_count`` messages and ``max_bytes`` bytes are waiting to be taken;
    otherwise it is *parked*, unacknowledged, so a well-behaved sender (which
    keeps a bounded window of unacknowledged messages) stops sending.  A sender
    that overflows ``max_parked`` anyway is misbehaving: ``offer`` returns
    "overflow" and its session is ended.  ``taken`` is called by the
    application thread when it takes a message; ``unpark`` (I/O thread)
    returns the parked messages that now fit.
    """

    def __init__(self, max_count: int, max_bytes: int, max_parked: int) -> None:
        self.max_count, self.max_bytes, self.max_parked = max_count, max_bytes, max_parked
        self._lock = threading.Lock()
        self._count = 0
        self._bytes = 0
        self.parked: deque[tuple[Message, int]] = deque()

    def _fits(self, size: int) -> bool:
        return self._count < self.max_count and (self._count == 0 or self._bytes + size <= self.max_bytes)

    def offer(self, msg: Message, size: int) -> str:
        """'deliver' (caller hands it over now), 'parked' or 'overflow'."""
        with self._lock:
            if not self.parked and self._fits(size):
                self._count += 1
                self._bytes += size
                return "deliver"
        if len(self.parked) >= self.max_parked:
            return "overflow"
        self.parked.append((msg, size))
        return "parked"

    def taken(self, size: int) -> None:
        with self._lock:
            self._count -= 1
            self._bytes -= size

    def unpark(self) -> list[tuple[Message, int]]:
        out: list[tuple[Message, int]] = []
        with self._lock:
            while self.parked and self._fits(self.parked[0][1]):
                msg, size = self.parked.popleft()
                self._count += 1
                self._bytes += size
                out.append((msg, size))
        return out

    @property
    def waiting(self) -> int:
        """Messages delivered but not yet taken by the application."""
        return self._count


@dataclass(frozen=True)
class Delivery:
    """A received message handed to the application."""

    peer: str
    msg: Message
    size: int
    mailroom: Mailroom

    def taken(self) -> bool:
        """Called by the application thread when it takes this; True if parked messages wait."""
        self.mailroom.intake.taken(self.size)
        return bool(self.mailroom.intake.parked)


Ack = Callable[[Message], None]


class Mailroom:
    """One peer's outbox, delivered ids and intake (used on the I/O thread)."""

    def __init__(self, peer: str, inbox: queue.Queue, intake: Intake, max_outbox: int) -> None:
        self.peer, self.inbox, self.intake, self.max_outbox = peer, inbox, intake, max_outbox
        self.outbox: OrderedDict[int | str, Message] = OrderedDict()
        self.seen = SeenIds()

    def keep(self, msg: Message) -> None:
        """Keep ``msg`` until the peer acknowledges it (the oldest goes if the outbox is full)."""
        if len(self.outbox) >= self.max_outbox:
            old_id, old = self.outbox.popitem(last=False)
            log.warning("%s has %d unacknowledged messages; dropping the oldest (%s %s)",
                        self.peer, self.max_outbox, old.kind, old_id)  # fmt: skip
        self.outbox[msg.msg_id] = msg

    def settle(self, msg_id: int | str | None) -> Message | None:
        """The peer acknowledged (or refused) ``msg_id``: forget it."""
        return self.outbox.pop(msg_id, None) if msg_id is not None else None

    def receive(self, msg: Message, size: int, ack: Ack) -> str:
        """A data message arrived: 'duplicate', 'delivered', 'parked' or 'overflow' (end the session)."""
        if msg.msg_id in self.seen:
            ack(msg)  # a resend of what the application already has
            return "duplicate"
        verdict = self.intake.offer(msg, size)
        if verdict == "deliver":
            self._deliver(msg, size, ack)
            return "delivered"
        return verdict

    def unpark(self, ack: Ack) -> None:
        """Let in the parked messages that now fit (after the application took some)."""
        for msg, size in self.intake.unpark():
            self._deliver(msg, size, ack)

    def forget_parked(self) -> None:
        """The session ended: parked messages were never acknowledged, so the sender sends them again."""
        self.intake.parked.clear()

    def _deliver(self, msg: Message, size: int, ack: Ack) -> None:
        self.seen.add(msg.msg_id)
        ack(msg)
        self.inbox.put(Delivery(self.peer, msg, size, self))
