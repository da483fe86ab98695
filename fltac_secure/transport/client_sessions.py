"""The client's side of one session: what the aggregator's messages do.

``ClientSessions`` is the half of ``TransportClient`` that handles decoded
messages: WELCOME (or REJECT) after the handshake, then ACK/NACK of what this
site sent (which opens its send window), PING, BYE, replies to requests and
data for the application (through the ``Mailroom``).  The connection
lifecycle (sockets, handshakes, retries and backoff) is in ``client.py``.
"""

from __future__ import annotations

from collections.abc import Callable

from fltac_secure.errors import FltacError, ProtocolError, TransportError
from fltac_secure.transport import envelope as env
from fltac_secure.transport.codec import decode
from fltac_secure.transport.channel import PREAUTH_MAX_BYTES
from fltac_secure.transport.delivery import Mailroom
from fltac_secure.transport.envelope import Message
from fltac_secure.transport.loop import IOLoop
from fltac_secure.transport.refusals import Waiter
from fltac_secure.transport.session import Link

FINAL_BYE = frozenset({"certificate_revoked"})
"""Reasons for which the server ends a session that a new handshake cannot fix."""
RETRY_REJECT = frozenset({"duplicate_session"})
"""Refusals that may clear by themselves (the other session is going away): retried, then final."""


class ClientSessions(IOLoop):
    """Message handling of the client's session (runs on the I/O thread)."""

    # set by TransportClient
    name: str
    federation: str
    plan_hash: str
    endpoint: str
    max_message_bytes: int
    stall_timeout: float
    server_limits: dict
    _state: str
    _attempts: int
    _backoff: tuple[float, float, int]
    _keepalive: float
    _mail: Mailroom
    _in_flight: set[int | str]
    _acks: dict[int | str, Waiter]
    _replies: dict[int | str, Waiter]
    _welcomed: Waiter
    _link: Link | None
    _retry: Callable[[str], None]
    _fail: Callable[[TransportError], None]
    _fill_window: Callable[[], None]

    def _on_message(self, link: Link, raw: memoryview) -> None:
        ready = self._state == "ready"
        limit = self.max_message_bytes if ready else PREAUTH_MAX_BYTES
        try:  # before WELCOME, read a REJECT even if it comes from another plan (it says why)
            msg = decode(raw, expect_federation=self.federation if ready else None,
                         expect_plan_hash=self.plan_hash if ready else None, max_bytes=limit)  # fmt: skip
        except ProtocolError as exc:
            if self._state != "ready":
                self._fail(TransportError(f"the aggregator answered with an invalid message: {exc}", exc.reason))
            else:
                self._retry(f"invalid message from the aggregator ({exc})")
            return
        link.report_message("received", msg, len(raw))
        if msg.kind == env.REJECT:
            reason, detail = str(msg.meta.get("reason", "rejected")), str(msg.meta.get("detail", ""))
            if reason in RETRY_REJECT and self._attempts < self._backoff[2]:
                self._retry(f"the aggregator refused this session for now: {detail}")
            else:
                self._fail(TransportError(f"the aggregator refused this site: {detail}", reason))
        elif self._state == "hello":
            self._on_welcome(link, msg)
        elif msg.kind == env.BYE:
            self._on_bye(msg)
        else:
            self._dispatch(link, msg, len(raw))

    def _on_welcome(self, link: Link, msg: Message) -> None:
        if msg.kind != env.WELCOME:
            self._fail(TransportError(f"expected WELCOME or REJECT, got {msg.kind}", "protocol"))
            return
        if (msg.federation, msg.plan_hash) != (self.federation, self.plan_hash):
            self._fail(TransportError("the aggregator runs another federation or plan; use the same plan.yaml",
                                      "plan_mismatch"))  # fmt: skip
            return
        self.server_limits = dict(msg.meta)
        idle = msg.meta.get("idle_timeout_s")
        if isinstance(idle, int | float) and idle > 0:
            self._keepalive = min(self.stall_timeout, float(idle)) / 3
        link.channel.max_message_bytes = self.max_message_bytes
        self._state, self._attempts = "ready", 0
        self._in_flight.clear()
        self._fill_window()
        self._welcomed.finish()

    def _on_bye(self, msg: Message) -> None:
        reason, detail = str(msg.meta.get("reason", "bye")), str(msg.meta.get("detail", ""))
        if reason in FINAL_BYE:
            self._fail(TransportError(f"the aggregator ended the session: {detail}", reason))
            return
        if reason not in ("session_expired", "idle", "backlog") and self._mail.outbox:
            # messages are acknowledged in stream order: the oldest unacknowledged one ended the session
            msg_id, culprit = next(iter(self._mail.outbox.items()))
            self._settle(msg_id, TransportError(f"the aggregator refused {culprit.kind} {msg_id}: {detail}", reason))
        self._retry(f"the aggregator ended the session ({reason}: {detail})")

    def _dispatch(self, link: Link, msg: Message, size: int) -> None:
        if msg.kind == env.ACK:
            self._settle(env.referenced_id(msg, "ack"), None)
        elif msg.kind == env.NACK:
            reason, detail = str(msg.meta.get("reason", "refused")), str(msg.meta.get("detail", ""))
            self._settle(env.referenced_id(msg, "nack"), ProtocolError(f"the aggregator refused the message: {detail}", reason))
        elif msg.kind == env.PING:
            link.queue(self._control(env.PONG, {}))
        elif msg.kind in (env.PONG, env.HELLO, env.WELCOME):
            return
        else:
            ack = self._acker(link)
            waiter = self._replies.get(env.referenced_id(msg, "in_reply_to"))  # type: ignore[arg-type]
            if waiter is not None and msg.msg_id not in self._mail.seen:
                del self._replies[msg.meta["in_reply_to"]]
                self._mail.seen.add(msg.msg_id)
                ack(msg)
                waiter.finish(reply=msg)
            elif self._mail.receive(msg, size, ack) == "overflow":
                self._retry(f"the aggregator sent more than {self._mail.intake.max_parked} unacknowledged messages")

    def _acker(self, link: Link):  # type: ignore[no-untyped-def]
        def ack(msg: Message) -> None:
            link.queue(self._control(env.ACK, {"ack": msg.msg_id}))

        return ack

    def _settle(self, msg_id: int | str | None, error: FltacError | None) -> None:
        self._mail.settle(msg_id)
        self._in_flight.discard(msg_id)
        self._fill_window()
        waiter = self._acks.pop(msg_id, None)
        if waiter is not None:
            waiter.finish(error)
        if error is not None:
            reply = self._replies.pop(msg_id, None)
            if reply is not None:
                reply.finish(error)

    def _control(self, kind: str, meta: dict) -> Message:
        return Message(kind, self.federation, self.plan_hash, self.name, 0, self.ids.next(), meta)
