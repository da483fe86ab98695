"""The server's side of one session: what it says, and whom it lets in.

``ServerSessions`` is the half of ``TransportServer`` that handles a peer's
decoded messages: the HELLO and the admission checks (role, roster, name,
plan, revocation, one live session per certificate) that end in WELCOME or
REJECT, then the open session's control messages (ACK, PING, BYE) and data,
which go through the peer's ``Mailroom`` to the application.  Refusals keep
the stream when they can (NACK) and end the session when they cannot (BYE).
The socket loop, the session table and the timers are in ``server.py``; the
per-peer error boundary there wraps every call into this class.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from cryptography import x509

from fltac_secure.errors import ProtocolError
from fltac_secure.pki import peer_common_name, peer_role
from fltac_secure.transport import envelope as env
from fltac_secure.transport.admission import Refusal, admit
from fltac_secure.transport.channel import PREAUTH_MAX_BYTES
from fltac_secure.transport.codec import decode, decode_header
from fltac_secure.transport.delivery import Mailroom
from fltac_secure.transport.envelope import Message
from fltac_secure.transport.events import LedgerHook
from fltac_secure.transport.loop import IOLoop
from fltac_secure.transport.session import Link

log = logging.getLogger("fltac_secure.transport.server")

PARKED_MESSAGES = 16
"""Unacknowledged messages one session may have held; a client keeps at most ``client.WINDOW`` in flight."""


@dataclass
class PeerBook:
    """What the server keeps per authenticated name, across that peer's sessions."""

    mail: Mailroom
    ident: bytes | None = None


class ServerSessions(IOLoop):
    """Message handling of the server's sessions (runs on the I/O thread)."""

    # set by TransportServer
    roster: frozenset[str]
    federation: str
    plan_hash: str
    name: str
    max_message_bytes: int
    idle_timeout: float
    session_lifetime: float
    _links: dict[bytes, Link]
    _books: dict[str, PeerBook]
    _hook: LedgerHook | None
    _revoked: frozenset[int]
    _plan_sections: dict[str, str]
    _sock: Any
    _pending: Any
    _drop: Callable[..., None]
    _refresh: Callable[[], None]
    _book: Callable[[str], PeerBook]

    def _on_message(self, ident: bytes, link: Link, raw: memoryview) -> None:
        if link.name is None:
            self._on_hello(ident, link, raw)
            return
        try:
            msg = decode(raw, expect_federation=self.federation, expect_plan_hash=self.plan_hash,
                         max_bytes=self.max_message_bytes)  # fmt: skip
        except ProtocolError as exc:
            self._refuse_message(link, raw, exc)
            return
        link.report_message("received", msg, len(raw))
        if msg.sender != link.name:
            detail = f"message claims sender {msg.sender!r} but the session belongs to {link.name!r}"
            self._nack(link, msg.msg_id, "sender_mismatch", detail)
            return
        self._dispatch(link, msg, len(raw))

    def _dispatch(self, link: Link, msg: Message, size: int) -> None:
        assert link.name is not None
        book = self._book(link.name)
        if msg.kind == env.ACK:
            book.mail.settle(env.referenced_id(msg, "ack"))
        elif msg.kind == env.PING:
            link.queue(self._control(env.PONG, {}))
        elif msg.kind == env.BYE:
            link.closing = True
        elif msg.kind in (env.HELLO, env.WELCOME, env.REJECT, env.PONG):
            if msg.kind != env.PONG:
                self._nack(link, msg.msg_id, "protocol", f"{msg.kind} is not expected in an open session")
        else:  # data (and NACKs of our messages, which the application should see)
            if msg.kind == env.NACK and book.mail.settle(env.referenced_id(msg, "nack")) is None:
                log.info("ignored a NACK from %s of a message it was never sent", link.name)
                return
            if book.mail.receive(msg, size, self._acker(link)) == "overflow":
                self._bye(link, "backlog", f"more than {PARKED_MESSAGES} unacknowledged messages; wait for ACKs")

    def _acker(self, link: Link | None):  # type: ignore[no-untyped-def]
        def ack(msg: Message) -> None:
            if link is not None and msg.kind != env.NACK:  # a NACK is never acknowledged
                link.queue(self._control(env.ACK, {"ack": msg.msg_id}))

        return ack

    def _unpark(self, name: str) -> None:
        book = self._books.get(name)
        if book is not None:
            book.mail.unpark(self._acker(self._links.get(book.ident) if book.ident is not None else None))

    def _on_hello(self, ident: bytes, link: Link, raw: memoryview) -> None:
        try:
            hello = decode(raw, expect_federation=None, expect_plan_hash=None, max_bytes=PREAUTH_MAX_BYTES)
        except ProtocolError as exc:
            self._reject(link, Refusal("protocol", f"first message is not a valid HELLO: {exc}"))
            return
        cn = peer_common_name(link.channel.obj)
        link.peer = cn
        link.report_message("received", hello, len(raw))
        cert = x509.load_der_x509_certificate(link.channel.obj.getpeercert(binary_form=True))
        refusal = admit(cn, hello, roster=self.roster, federation=self.federation, plan_hash=self.plan_hash,
                        role=peer_role(link.channel.obj), plan_sections=self._plan_sections)  # fmt: skip
        if refusal is None and cert.serial_number in self._revoked:  # handshake began under the previous CRL
            refusal = Refusal("certificate_revoked", f"the certificate of {cn!r} has been revoked")
        if refusal is None:
            refusal = self._one_session(ident, cn)
        if refusal is not None:
            log.warning("refused %s from %s: %s", cn, link.source or "?", refusal.detail)
            self._reject(link, refusal)
            return
        self._welcome(ident, link, cn, cert)

    def _one_session(self, ident: bytes, cn: str) -> Refusal | None:
        """One live session per certificate name: a second one is refused while the first is alive.

        A site that restarted left a dead connection behind: ZeroMQ knows it is
        gone, so a probe (a PING) to it fails and the new session takes over.  A
        second process with the same certificate finds the first one alive and
        is refused; it retries a few times (the first may be going away) and then
        stops with this reason.
        """
        book = self._books.get(cn)
        old = self._links.get(book.ident) if book is not None and book.ident not in (None, ident) else None
        if old is None or old.closing or book is None or book.ident is None:
            return None
        old.queue(self._control(env.PING, {}))
        old.flush(self._sock)  # raises nothing: a vanished peer only sets ``gone``
        if old.gone:
            self._drop(book.ident, "replaced by a newer session (the old connection is gone)")
            return None
        return Refusal("duplicate_session", f"another process holding the certificate of {cn!r} is connected "
                       f"from {old.source or 'an unknown address'}; stop it (only one may run per site)")

    def _welcome(self, ident: bytes, link: Link, cn: str, cert: x509.Certificate) -> None:
        book = self._book(cn)
        book.mail.forget_parked()
        self._pending.remove(ident)
        book.ident, link.name, link.serial = ident, cn, cert.serial_number
        link.set_hook(self._hook)
        link.channel.max_message_bytes = self.max_message_bytes
        now = time.monotonic()
        left = (cert.not_valid_after_utc - datetime.now(timezone.utc)).total_seconds()
        link.established, link.expires = now, now + max(0.0, min(self.session_lifetime, left))
        meta = {"max_message_bytes": self.max_message_bytes, "idle_timeout_s": self.idle_timeout,
                "session_lifetime_s": self.session_lifetime}  # fmt: skip
        link.queue(self._control(env.WELCOME, meta))
        for msg in book.mail.outbox.values():
            link.queue(msg)
        self._refresh()

    def _refuse_message(self, link: Link, raw: memoryview, exc: ProtocolError) -> None:
        try:
            header = decode_header(raw, max_bytes=self.max_message_bytes)
        except ProtocolError:
            self._bye(link, exc.reason, str(exc))
            return
        msg_id = header["msg_id"]
        if isinstance(msg_id, bool) or not isinstance(msg_id, int | str):
            self._bye(link, exc.reason, str(exc))
            return
        rnd = header["round"] if isinstance(header["round"], int) else -1
        link.report("received", str(header["kind"])[:32], rnd, msg_id, 0, len(raw))
        self._nack(link, msg_id, exc.reason, str(exc))

    def _control(self, kind: str, meta: dict) -> Message:
        return Message(kind, self.federation, self.plan_hash, self.name, 0, self.ids.next(), meta)

    def _nack(self, link: Link, msg_id: int | str, reason: str, detail: str) -> None:
        log.info("NACK %s from %s: %s", msg_id, link.name, detail)
        link.queue(self._control(env.NACK, {"nack": msg_id, "reason": reason, "detail": detail}))

    def _reject(self, link: Link, refusal: Refusal) -> None:
        link.queue(self._control(env.REJECT, {"reason": refusal.reason, "detail": refusal.detail}))
        link.closing = True
        self._refresh()

    def _bye(self, link: Link, reason: str, detail: str) -> None:
        link.queue(self._control(env.BYE, {"reason": reason, "detail": detail}))
        link.closing = True
        self._refresh()
