"""The aggregator side: a ROUTER socket, one TLS session per peer identity.

THE INVARIANT: one peer's bytes, or its disappearance, can cost that peer its
own session and nothing else.  Every exception raised while handling one
peer's frames (TLS, framing, JSON, safetensors, rules, numpy) ends that
peer's session with a logged reason; a send to a peer whose connection is
gone (ZeroMQ's EHOSTUNREACH under ROUTER_MANDATORY) drops its session and
keeps its unacknowledged messages for its next session.  Only a failure of
the server itself (its socket, its own code) stops the loop, and then every
caller gets a ``TransportError`` at once.

Threats answered, in the order bytes meet them: frames larger than one chunk
are dropped by ZeroMQ before any code sees them (``MAXMSGSIZE``); sessions
that are not authorised yet are bounded per source address and in total, and
a new connection evicts the oldest of them (``guard.PendingTable``), so a
flood of stalled handshakes cannot shut a real site out; peers that never
finish a handshake are dropped after ``handshake_timeout``; OpenSSL verifies
the chain, the CRL and the key usage; ``admission.admit`` checks the
certificate's role, roster, claimed name and plan hash before WELCOME; until
then a message may be at most 64 KiB and the peer's ledger events are rate
limited; afterwards every message is strictly decoded, and refused ones are
NACKed (stream intact) or end the session (stream untrustworthy).  Memory is
bounded: received messages wait for the application in a bounded ``Intake``
per peer (beyond it they are held unacknowledged, which stops a well-behaved
sender; a sender that goes on loses its session), each peer's outbox and
send queue are bounded.  Revocation takes effect at once: with a
``CrlWatch``, a changed CRL file (or ``reload_crl()``, e.g. on SIGHUP) gives
new handshakes a fresh context and ends live sessions of newly revoked
certificates.  Sessions also expire after ``session_lifetime`` or at the
certificate's notAfter, whichever is first.

Threading: see ``loop.py``; all public methods are thread-safe.
"""

from __future__ import annotations

import logging
import queue
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Collection

import zmq

from fltac_secure.errors import ConfigError, ProtocolError, TransportError
from fltac_secure.pki.crl import CrlUpdate, CrlWatch
from fltac_secure.transport import envelope as env
from fltac_secure.transport.channel import CHUNK_BYTES, PREAUTH_MAX_BYTES, PeerClosed, TlsChannel
from fltac_secure.transport.envelope import Message
from fltac_secure.transport.events import HookFailed, LedgerHook, WireEvent
from fltac_secure.transport.guard import EventGate, PendingTable
from fltac_secure.transport.server_sessions import PARKED_MESSAGES, PeerBook, ServerSessions
from fltac_secure.transport.delivery import Delivery, Intake, Mailroom
from fltac_secure.transport.session import Link
from fltac_secure.transport.sockets import LARGE_FRAME_BYTES, bind_refusal, configure_socket, yield_cpu

log = logging.getLogger(__name__)

INBOX_MESSAGES = 8
"""Messages of one peer waiting for the application before further ones are held unacknowledged."""
OUTBOX_MESSAGES = 64
"""Unacknowledged messages kept for one peer; beyond it the oldest is dropped (with a warning)."""
CRL_POLL_S = 1.0
CLOSE_FLUSH_S = 1.0
"""At most this long, on close, for queued frames to reach the peers (ZeroMQ linger included)."""


class TransportServer(ServerSessions):
    """Mutual-TLS message server for one federation and plan.

    ``recv()`` yields ``(peer_name, Message)`` for data messages (each exactly
    once per server run, acknowledged on receipt); ``send(peer, msg)`` queues a
    message that is delivered -- again after a reconnect -- until acknowledged.
    """

    thread_name = "fltac-server-io"

    def __init__(
        self,
        bind: str,
        ssl_context: ssl.SSLContext,
        roster: Collection[str],
        federation: str,
        plan_hash: str,
        *,
        name: str = "aggregator",
        max_message_bytes: int = 512 << 20,
        handshake_timeout: float = 10.0,
        idle_timeout: float = 120.0,
        session_lifetime: float = 3600.0,
        max_pending: int = 256,
        max_pending_per_source: int = 64,
        chunk_bytes: int = CHUNK_BYTES,
        ledger_hook: LedgerHook | None = None,
        crl_watch: CrlWatch | None = None,
        plan_sections: dict[str, str] | None = None,
    ) -> None:
        if not roster:
            raise ConfigError("the roster is empty; a server with no authorised peers cannot serve anyone")
        if max_message_bytes < PREAUTH_MAX_BYTES:
            raise ConfigError(f"max_message_bytes must be at least {PREAUTH_MAX_BYTES}, got {max_message_bytes}")
        for what, v in (("handshake_timeout", handshake_timeout), ("idle_timeout", idle_timeout),
                        ("session_lifetime", session_lifetime)):  # fmt: skip
            if v <= 0:
                raise ConfigError(f"{what} must be > 0 seconds, got {v}")
        super().__init__()
        self.bind, self.name = bind, name
        self.roster = frozenset(roster)
        self.federation, self.plan_hash = federation, plan_hash
        self.max_message_bytes = max_message_bytes
        self.handshake_timeout, self.idle_timeout = handshake_timeout, idle_timeout
        self.session_lifetime = session_lifetime
        self._ctx, self._chunk, self._hook = ssl_context, chunk_bytes, ledger_hook
        self._links: dict[bytes, Link] = {}
        self._books: dict[str, PeerBook] = {}
        self._dead: OrderedDict[bytes, None] = OrderedDict()
        self._pending = PendingTable(max_pending, max_pending_per_source)
        self._gate = EventGate(rate=20.0, burst=200, what="ledger events of unauthorised peers")
        self._inbox: queue.Queue[Delivery | None] = queue.Queue()
        self._ready_names: frozenset[str] = frozenset()
        self._pending_count = 0
        self._started = threading.Event()
        self._sock: zmq.Socket | None = None
        self._next_timers = 0.0
        self._crl, self._next_crl = crl_watch, 0.0
        self._revoked: frozenset[int] = crl_watch.revoked if crl_watch is not None else frozenset()
        self._plan_sections = dict(plan_sections or {})
        self.endpoint: str | None = None

    # -- public API ----------------------------------------------------------
    def start(self) -> TransportServer:
        """Bind and start serving; ``self.endpoint`` is the bound address."""
        self._sock = self._zctx.socket(zmq.ROUTER)
        configure_socket(self._sock, self._chunk)
        self._sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        try:
            self._sock.bind(self.bind)
        except zmq.ZMQError as exc:
            self._sock.close(0)
            raise TransportError(bind_refusal(self.bind, exc), "bind") from exc
        self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._start_thread()
        return self

    def message(self, kind: str, *, round: int = 0, meta: dict | None = None, tensors: dict | None = None) -> Message:
        """A message from this server (federation, plan hash and sender filled in)."""
        return Message(kind, self.federation, self.plan_hash, self.name, round, "", meta or {}, tensors or {})

    def send(self, peer: str, msg: Message) -> int | str:
        """Queue ``msg`` for ``peer`` (delivered when it is, or next, connected); returns the msg_id."""
        if peer not in self.roster:
            raise TransportError(f"{peer!r} is not in this plan's roster; cannot send to it", "not_in_roster")
        if msg.federation != self.federation or msg.plan_hash != self.plan_hash:
            raise ProtocolError("message is for another federation or plan; build it with server.message()", "wrong_plan")
        env.validate_message(msg)
        if msg.msg_id == "":
            msg = Message(msg.kind, msg.federation, msg.plan_hash, msg.sender, msg.round, self.ids.next(),
                          msg.meta, msg.tensors)  # fmt: skip
        self._submit("send", peer, msg)
        return msg.msg_id

    def recv(self, timeout: float | None = None) -> tuple[str, Message] | None:
        """Next data message as ``(peer_name, message)``, or None after ``timeout`` seconds."""
        self._check_alive()
        try:
            item = self._inbox.get(timeout=timeout)
        except queue.Empty:
            return None
        if item is None:
            self._inbox.put(None)  # every later caller must see the failure too
            self._check_alive()
            return None
        if item.taken():
            self._submit("unpark", item.peer)
        return item.peer, item.msg

    def peers(self) -> list[str]:
        """Names with an authenticated session right now."""
        return sorted(self._ready_names)

    def pending_connections(self) -> int:
        """Sessions not (yet) authenticated: handshaking or waiting for HELLO."""
        return self._pending_count

    def set_ssl_context(self, ctx: ssl.SSLContext, *, expire: bool = True) -> None:
        """Use ``ctx`` (e.g. with a fresh CRL) for new sessions; expire current ones to re-check all peers."""
        self._submit("ctx", ctx, expire)

    def expire_sessions(self) -> None:
        """End every session now (BYE session_expired): clients re-handshake and resend."""
        self._submit("expire")

    def reload_crl(self) -> None:
        """Re-read the CRL now (the CLI calls this on SIGHUP); it is also re-read whenever its file changes."""
        self._submit("crl")

    # -- I/O thread: commands and socket ------------------------------------
    def _command(self, cmd: tuple) -> None:
        if cmd[0] == "send":
            _, peer, msg = cmd
            book = self._book(peer)
            book.mail.keep(msg)
            if book.ident is not None and book.ident in self._links:
                self._links[book.ident].queue(msg)
        elif cmd[0] == "unpark":
            self._unpark(cmd[1])
        elif cmd[0] == "ctx":
            self._ctx = cmd[1]
            if cmd[2]:
                self._expire_all()
        elif cmd[0] == "expire":
            self._expire_all()
        elif cmd[0] == "crl":
            self._poll_crl(force=True)

    def _book(self, name: str) -> PeerBook:
        book = self._books.get(name)
        if book is None:
            intake = Intake(INBOX_MESSAGES, 2 * self.max_message_bytes, PARKED_MESSAGES)
            book = self._books[name] = PeerBook(Mailroom(name, self._inbox, intake, OUTBOX_MESSAGES))
        return book

    def _expire_all(self) -> None:
        for ident, link in list(self._links.items()):
            if link.name is not None:
                self._bye(link, "session_expired", "session expired; handshake again")
            else:
                self._drop(ident, "sessions expired")

    def _step(self) -> None:
        assert self._sock is not None
        busy = [link.blocked for link in self._links.values() if link.busy]
        timeout = 100 if not busy else (0 if not all(busy) else 2)  # ROUTER has no useful POLLOUT
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._waker.fileno, zmq.POLLIN)
        events = dict(poller.poll(timeout))
        self._drain_commands()
        if self._sock in events:
            self._receive()
        for ident, link in list(self._links.items()):
            try:
                link.flush(self._sock)
            except HookFailed:
                raise  # our own failure: stop, say why
            except Exception as exc:  # the per-peer boundary, outgoing side
                self._drop(ident, f"send failed ({exc!r})")
                continue
            if link.gone:
                self._drop(ident, "its connection is gone")
            elif link.backlogged:
                self._drop(ident, "it does not read what it is sent")
            elif link.closing and not link.busy:
                self._drop(ident)
        now = time.monotonic()
        if now >= self._next_timers:
            self._next_timers = now + 0.05
            self._timers(now)

    def _receive(self) -> None:
        assert self._sock is not None
        for _ in range(256):
            try:
                parts = self._sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            ident = parts[0].bytes
            if len(parts) != 2:  # a DEALER sends exactly one frame per message
                self._drop(ident, "sent a multi-part frame")
                continue
            self._on_frame(ident, parts[1])
            link = self._links.get(ident)
            if len(parts[1]) >= LARGE_FRAME_BYTES and link is not None and link.channel.mid_message:
                yield_cpu()  # more of this message to come: let ZeroMQ's I/O thread read it meanwhile

    def _link_for(self, ident: bytes, frame: zmq.Frame) -> Link | None:
        link = self._links.get(ident)
        if link is not None or ident in self._dead:
            return link
        try:
            source = str(frame.get("Peer-Address"))
        except zmq.ZMQError:
            source = ""
        for old in self._pending.add(ident, source):
            self._drop(old, "evicted: too many unauthenticated sessions")
        channel = TlsChannel(self._ctx, server_side=True, max_message_bytes=PREAUTH_MAX_BYTES)
        link = Link(channel, route=[ident], peer=f"?{source}", ledger_hook=self._gated, chunk_bytes=self._chunk)
        link.source = source
        self._links[ident] = link
        self._refresh()
        return link

    def _gated(self, event: WireEvent) -> None:
        """Ledger hook for peers not yet authorised: their events are rate limited."""
        if self._hook is not None and self._gate.allow():
            self._hook(event)

    def _on_frame(self, ident: bytes, frame: zmq.Frame) -> None:
        link = self._link_for(ident, frame)
        if link is None or link.closing:
            return
        link.last_rx = time.monotonic()
        try:
            self._feed(ident, link, frame.buffer)
        except ssl.SSLError as exc:
            link.queue_raw(link.channel.outgoing())  # the alert tells the client why
            log.info("TLS refused for %s: %s", link.name or link.peer, exc)
            link.closing = True
        except PeerClosed:
            self._drop(ident, "closed the session")
        except ProtocolError as exc:  # bad prefix or too large: the stream cannot be trusted
            if link.name is None:
                link.closing = True
            else:
                self._bye(link, exc.reason, str(exc))
        except HookFailed:
            raise  # our own failure (the ledger cannot be written), not the peer's
        except Exception as exc:  # THE per-peer boundary: whatever this peer's bytes caused, only it pays
            log.warning("dropping %s: its data raised %r", link.name or link.peer, exc)
            self._drop(ident)

    def _feed(self, ident: bytes, link: Link, data: memoryview) -> None:
        link.channel.feed(data)
        if not link.channel.handshake_done:
            done = link.channel.handshake()
            link.queue_raw(link.channel.outgoing())
            if not done:
                return
        for raw in link.channel.messages():
            self._on_message(ident, link, raw)
            if link.closing or ident not in self._links:
                return
            if link.backlogged:  # checked per message: one frame can hold thousands of PINGs
                self._drop(ident, "it does not read what it is sent")
                return
        if link.channel.peer_closed:
            raise PeerClosed("peer closed the TLS session")

    # -- I/O thread: bookkeeping --------------------------------------------
    def _timers(self, now: float) -> None:
        if self._crl is not None and now >= self._next_crl:
            self._next_crl = now + CRL_POLL_S
            self._poll_crl(force=False)
        for ident, link in list(self._links.items()):
            if link.closing:
                if now - link.last_tx > self.handshake_timeout:
                    self._drop(ident)  # could not even flush the refusal
            elif link.held is not None:
                self._admit_held(ident, link)
            elif link.name is None and now - link.created > self.handshake_timeout:
                self._drop(ident, "handshake timeout")
            elif link.name is not None and now - link.last_rx > self.idle_timeout:
                self._bye(link, "idle", f"no traffic for {self.idle_timeout:g} s")
            elif link.expires is not None and now > link.expires and not link.busy and not link.channel.mid_message:
                self._bye(link, "session_expired", "session lifetime reached; handshake again")

    def _mark_dead(self, ident: bytes) -> None:
        self._dead[ident] = None
        while len(self._dead) > 4096:
            self._dead.popitem(last=False)

    def _poll_crl(self, *, force: bool) -> None:
        assert self._crl is not None
        update = self._crl.poll(force=force)
        if update is not None:
            self._apply_crl(update)

    def _apply_crl(self, update: CrlUpdate) -> None:
        """New handshakes use the new CRL; live sessions of revoked certificates end now."""
        self._ctx, self._revoked = update.context, update.revoked
        for link in list(self._links.values()):
            if link.name is not None and not link.closing and link.serial in update.revoked:
                log.warning("ending the session of %s: its certificate has been revoked", link.name)
                self._bye(link, "certificate_revoked", "this site's certificate has been revoked")

    def _drop(self, ident: bytes, why: str = "") -> None:
        link = self._links.pop(ident, None)
        self._mark_dead(ident)
        self._pending.remove(ident)
        if link is not None:
            if why:
                log.info("session of %s ended: %s", link.name or link.peer, why)
            if link.name is not None:
                book = self._books.get(link.name)
                if book is not None and book.ident == ident:
                    book.ident = None
                    book.mail.forget_parked()
        self._refresh()

    def _refresh(self) -> None:
        names = [link.name for link in self._links.values() if link.name is not None and not link.closing]
        self._ready_names = frozenset(n for n in names if n is not None)
        self._pending_count = len(self._pending)

    def _on_crash(self, exc: BaseException) -> None:
        log.error("server I/O thread failed: %r", exc)
        self._inbox.put(None)

    def _teardown(self) -> None:
        """Close the socket; on an orderly close, first let what is queued (the last ACKs) reach the peers.

        Bounded by ``CLOSE_FLUSH_S`` (a peer that does not read cannot hold the close up): the
        aggregator closes right after the last DONE, and a lost ACK would leave that site waiting.
        """
        if self._sock is None:
            return
        if self._crash is None:
            deadline = time.monotonic() + CLOSE_FLUSH_S
            while time.monotonic() < deadline and any(link.busy for link in self._links.values()):
                for ident, link in list(self._links.items()):
                    try:
                        link.flush(self._sock)
                    except Exception:  # noqa: BLE001 - closing: a peer's failure only ends its flush
                        self._links.pop(ident, None)
                time.sleep(0.002)
        self._sock.close(linger=int(CLOSE_FLUSH_S * 1000) if self._crash is None else 0)
