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
from fltac_secure.transport.events import HookFailed, LedgerHook
from fltac_secure.transport.loop import IOLoop
from fltac_secure.transport.session import Link

log = logging.getLogger("fltac_secure.transport.server")

PARKED_MESSAGES = 16
DUPLICATE_GRACE_S = 2.0
"""How long a new session of a name waits for that name's old session to turn out gone (at most a
quarter of the handshake timeout, so the client is answered well within its own)."""
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
    handshake_timeout: float
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
        if link.held is not None:
            link.held = None
            self._reject(link, Refusal("protocol", "a message came before WELCOME; wait for it"))
            return
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
        if refusal is not None:
            log.warning("refused %s from %s: %s", cn, link.source or "?", refusal.detail)
            self._reject(link, refusal)
            return
        link.held = (cn, cert, time.monotonic() + min(DUPLICATE_GRACE_S, self.handshake_timeout / 4))
        self._admit_held(ident, link)

    def _admit_held(self, ident: bytes, link: Link) -> None:
        """One live session per certificate: WELCOME once no other session of the name is alive.

        A site that restarted or reconnected left its old connection behind.
        Once ZeroMQ has noticed that it is gone (usually within milliseconds),
        a probe (a PING) to it fails and the new session takes over; until then
        the new one is held, for at most ``DUPLICATE_GRACE_S``.  A second
        process running with the same certificate finds the first one alive
        all that time and is refused with ``duplicate_session``.  Called on
        HELLO and again by the timers while a session is held.
        """
        assert link.held is not None
        cn, cert, deadline = link.held
        book = self._books.get(cn)
        old = self._links.get(book.ident) if book is not None and book.ident not in (None, ident) else None
        if old is not None and not old.closing:
            old.queue(self._control(env.PING, {}))
            try:
                old.flush(self._sock)  # a vanished peer only sets ``gone``
            except HookFailed:
                raise
            except Exception:  # noqa: BLE001 - the old session is broken (this also runs from the timers)
                old.gone = True
            if old.gone:
                assert book is not None and book.ident is not None
                self._drop(book.ident, "replaced by a newer session (the old connection is gone)")
            elif time.monotonic() < deadline:
                return  # held: ask again at the next timer tick
            else:
                refusal = Refusal("duplicate_session", f"another process holding the certificate of {cn!r} is "
                                  f"connected from {old.source or 'an unknown address'}; stop it (only one may run "
                                  "per site)")  # fmt: skip
                log.warning("refused %s from %s: %s", cn, link.source or "?", refusal.detail)
                link.held = None
                self._reject(link, refusal)
                return
        link.held = None
        self._welcome(ident, link, cn, cert)

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
