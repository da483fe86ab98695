"""The collaborator side: a DEALER to one endpoint, with a session layer.

ZeroMQ reconnects silently under a TLS stream, which then turns to garbage, so
the client never trusts a connection it did not just handshake: on any TLS
error, stall or server restart it opens a fresh DEALER, handshakes again,
waits for WELCOME and resends every message not yet acknowledged (the server
drops duplicates by message id), with bounded exponential backoff.  A refusal
by the server (TLS alert during the handshake, or REJECT) is final and raised
as ``TransportError`` with the server's reason; retrying would not fix it.

Bounds: at most ``WINDOW`` messages are in flight unacknowledged (the server
withholds ACKs while the aggregator is behind, so the client waits instead
of piling data up there), and received messages wait for the application in
a bounded ``Intake`` (beyond it they are held unacknowledged; an aggregator
that sends far more than that loses the session).  The server's certificate
must be an aggregator certificate (serverAuth alone), not merely CA-signed.

Threading: see ``loop.py``; all public methods are thread-safe.
"""

from __future__ import annotations

import logging
import queue
import random
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import zmq

from fltac_secure.errors import ConfigError, ProtocolError, TransportError
from fltac_secure.pki import peer_common_name, peer_role
from fltac_secure.transport import envelope as env
from fltac_secure.transport.channel import CHUNK_BYTES, PREAUTH_MAX_BYTES, PeerClosed, TlsChannel
from fltac_secure.transport.envelope import Message
from fltac_secure.transport.events import HookFailed, LedgerHook
from fltac_secure.transport.client_sessions import ClientSessions
from fltac_secure.transport.refusals import Waiter as _Waiter
from fltac_secure.transport.refusals import tls_refusal
from fltac_secure.transport.delivery import Delivery, Intake, Mailroom
from fltac_secure.transport.session import Link
from fltac_secure.transport.sockets import LARGE_FRAME_BYTES, configure_socket, yield_cpu

log = logging.getLogger(__name__)

WINDOW = 8
"""Messages sent but not yet acknowledged; the rest wait in the outbox."""


@dataclass(frozen=True)
class Retry:
    """What ``on_retry`` hears each time a session attempt failed and another is scheduled."""

    endpoint: str
    attempt: int  # the attempt that failed (from 1)
    max_attempts: int
    delay: float  # seconds until the next attempt (the backoff)
    why: str
    heard: bool  # whether anything has ever answered at the endpoint (False: no aggregator there so far)


class TransportClient(ClientSessions):
    """Mutual-TLS message client for one federation and plan."""

    thread_name = "fltac-client-io"

    def __init__(
        self,
        endpoint: str,
        ssl_context: ssl.SSLContext,
        name: str,
        federation: str,
        plan_hash: str,
        *,
        server_hostname: str = "localhost",
        max_message_bytes: int = 512 << 20,
        handshake_timeout: float = 10.0,
        stall_timeout: float = 30.0,
        backoff_base: float = 0.05,
        backoff_max: float = 5.0,
        max_attempts: int = 8,
        chunk_bytes: int = CHUNK_BYTES,
        ledger_hook: LedgerHook | None = None,
        hello_meta: dict | None = None,
        on_retry: Callable[[Retry], None] | None = None,
    ) -> None:
        if max_attempts < 1 or backoff_base <= 0 or backoff_max < backoff_base:
            raise ConfigError("need max_attempts >= 1 and 0 < backoff_base <= backoff_max")
        if handshake_timeout <= 0 or stall_timeout <= 0:
            raise ConfigError("handshake_timeout and stall_timeout must be > 0 seconds")
        super().__init__()
        self.endpoint, self.name, self.server_hostname = endpoint, name, server_hostname
        self.federation, self.plan_hash = federation, plan_hash
        self.max_message_bytes = max_message_bytes
        self.handshake_timeout, self.stall_timeout = handshake_timeout, stall_timeout
        self._backoff = (backoff_base, backoff_max, max_attempts)
        self._ctx, self._chunk, self._hook = ssl_context, chunk_bytes, ledger_hook
        self._sock: zmq.Socket | None = None
        self._link: Link | None = None
        self._state = "backoff"  # backoff -> handshake -> hello -> ready; or fatal
        self._attempts = 0
        self._next_attempt = 0.0
        self._keepalive = stall_timeout / 3
        self._in_flight: set[int | str] = set()
        self._acks: dict[int | str, _Waiter] = {}
        self._replies: dict[int | str, _Waiter] = {}
        self._inbox: queue.Queue[Delivery | None] = queue.Queue()
        # the application waits on each message it sends, so the outbox never needs to drop one
        self._mail = Mailroom("aggregator", self._inbox, Intake(16, 2 * max_message_bytes, 128), max_outbox=1 << 30)
        self._welcomed = _Waiter()
        self._fatal: TransportError | None = None
        self.server_limits: dict = {}
        self._hello_meta = {**(hello_meta or {}), "name": name}
        self._on_retry = on_retry
        self.heard = False  # any frame ever came back from the endpoint
        self._heard_now = False  # ... during the current attempt

    # -- public API ----------------------------------------------------------
    def connect(self, timeout: float | None = None) -> TransportClient:
        """Handshake and wait for WELCOME; raises ``TransportError`` with the server's reason."""
        self._start_thread()
        limit = timeout if timeout is not None else self.handshake_timeout * (self._backoff[2] + 1)
        self._welcomed.wait(limit, "WELCOME from the aggregator")
        return self

    def message(self, kind: str, *, round: int = 0, meta: dict | None = None, tensors: dict | None = None) -> Message:
        """A message from this site (federation, plan hash and sender filled in)."""
        return Message(kind, self.federation, self.plan_hash, self.name, round, "", meta or {}, tensors or {})

    def send(self, msg: Message, timeout: float | None = None) -> int | str:
        """Send ``msg`` and wait for the server's ACK; returns its msg_id.

        Raises ``ProtocolError`` if the server refused the message (NACK),
        ``TransportError`` if the session failed for good or on ``timeout``.
        """
        msg, waiter = self._queue(msg, None)
        waiter.wait(timeout, f"acknowledgement of {msg.kind} {msg.msg_id}")
        return msg.msg_id

    def request(self, msg: Message, timeout: float | None = None) -> Message:
        """Send ``msg`` and return the reply (the message whose meta ``in_reply_to`` is its id)."""
        reply = _Waiter()
        msg, ack = self._queue(msg, reply)
        deadline = None if timeout is None else time.monotonic() + timeout
        ack.wait(timeout, f"acknowledgement of {msg.kind} {msg.msg_id}")
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        result = reply.wait(left, f"reply to {msg.kind} {msg.msg_id}")
        assert result is not None
        return result

    def recv(self, timeout: float | None = None) -> Message | None:
        """Next data message from the server, or None after ``timeout`` seconds."""
        self._check_alive()
        try:
            item = self._inbox.get(timeout=timeout)
        except queue.Empty:
            return None
        if item is None:
            self._inbox.put(None)  # every later caller must see the failure too
            self._raise_fatal()
            return None
        if item.taken():
            self._submit("unpark")
        return item.msg

    @property
    def connected(self) -> bool:
        return self._state == "ready"

    def _queue(self, msg: Message, reply: _Waiter | None) -> tuple[Message, _Waiter]:
        self._raise_fatal()
        if (msg.federation, msg.plan_hash, msg.sender) != (self.federation, self.plan_hash, self.name):
            raise ProtocolError("message is for another federation, plan or sender; build it with client.message()")
        env.validate_message(msg)  # refuse locally what the server would refuse
        if msg.msg_id == "":
            msg = Message(msg.kind, msg.federation, msg.plan_hash, msg.sender, msg.round, self.ids.next(),
                          msg.meta, msg.tensors)  # fmt: skip
        waiter = _Waiter()
        self._submit("send", msg, waiter, reply)
        return msg, waiter

    def _raise_fatal(self) -> None:
        if self._fatal is not None:
            raise self._fatal
        self._check_alive()

    # -- I/O thread: connection lifecycle -----------------------------------
    def _command(self, cmd: tuple) -> None:
        if cmd[0] == "bye":
            if self._link is not None and self._sock is not None:
                self._link.queue(self._control(env.BYE, {"reason": "closing", "detail": "client closed"}))
                self._link.flush(self._sock)
            cmd[1].set()
            return
        if cmd[0] == "unpark":
            if self._link is not None:
                self._mail.unpark(self._acker(self._link))
            return
        _, msg, waiter, reply = cmd
        if self._fatal is not None:
            waiter.finish(self._fatal)
            return
        self._mail.keep(msg)
        self._acks[msg.msg_id] = waiter
        if reply is not None:
            self._replies[msg.msg_id] = reply
        self._fill_window()

    def _fill_window(self) -> None:
        """Put outbox messages on the wire, oldest first, until ``WINDOW`` are unacknowledged."""
        if self._state != "ready" or self._link is None:
            return
        for msg_id, msg in self._mail.outbox.items():
            if len(self._in_flight) >= WINDOW:
                return
            if msg_id not in self._in_flight:
                self._in_flight.add(msg_id)
                self._link.queue(msg)

    def _open(self) -> None:
        self._close_socket()
        self._attempts += 1
        self._sock = self._zctx.socket(zmq.DEALER)
        configure_socket(self._sock, self._chunk)
        # no IMMEDIATE: with it, libzmq discards what arrived but was not yet read when the connection drops
        self._sock.connect(self.endpoint)
        channel = TlsChannel(self._ctx, server_side=False, server_hostname=self.server_hostname,
                             max_message_bytes=PREAUTH_MAX_BYTES)  # fmt: skip
        self._link = Link(channel, route=[], peer=self.endpoint, ledger_hook=self._hook, chunk_bytes=self._chunk)
        channel.handshake()
        self._link.queue_raw(channel.outgoing())
        self._state = "handshake"
        self._heard_now = False

    def _retry(self, why: str) -> None:
        """Drop the session and schedule a fresh one, or give up after max_attempts."""
        base, cap, attempts = self._backoff
        self._close_socket()
        if self._attempts >= attempts:
            what = "cannot reach the aggregator at" if self.heard else "no aggregator at"
            self._fail(TransportError(f"{what} {self.endpoint} after {attempts} attempts ({why})", "unreachable"))
            return
        log.info("reconnecting to %s: %s", self.endpoint, why)
        delay = min(cap, base * 2 ** (self._attempts - 1)) * (1 + 0.25 * random.random())
        self._state, self._next_attempt = "backoff", time.monotonic() + delay
        if self._on_retry is not None:
            try:
                self._on_retry(Retry(self.endpoint, self._attempts, attempts, delay, why, self.heard))
            except Exception:  # noqa: BLE001 - a reporting hook must not end the session loop
                log.exception("on_retry hook failed")

    def _fail(self, error: TransportError) -> None:
        """A final failure: every waiter gets the error, the loop stops."""
        self._fatal, self._state = error, "fatal"
        self._close_socket()
        for waiter in [*self._acks.values(), *self._replies.values(), self._welcomed]:
            waiter.finish(error)
        self._acks.clear()
        self._replies.clear()
        self._inbox.put(None)
        self._stopping = True

    def _close_socket(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
        self._sock, self._link = None, None
        self._in_flight.clear()  # a new session sends them again
        self._mail.forget_parked()

    def _step(self) -> None:
        now = time.monotonic()
        if self._state == "backoff" and now >= self._next_attempt:
            self._open()
        link = self._link
        busy = link is not None and link.busy
        poller = zmq.Poller()
        poller.register(self._waker.fileno, zmq.POLLIN)
        if self._sock is not None:  # wait for room to send only when the high-water mark pushed back
            poller.register(self._sock, zmq.POLLIN | (zmq.POLLOUT if busy and link.blocked else 0))  # type: ignore[union-attr]
        wait = 50
        if busy and not link.blocked:  # type: ignore[union-attr]
            wait = 0
        elif self._state == "backoff":
            wait = min(50, max(1, int((self._next_attempt - now) * 1000)))
        events = dict(poller.poll(wait))
        self._drain_commands()
        if self._sock is not None and self._sock in events:
            self._receive()
        if self._sock is not None and self._link is not None:
            self._link.flush(self._sock)
        if self._link is not None:
            self._timers(time.monotonic(), self._link)

    def _timers(self, now: float, link: Link) -> None:
        if self._state in ("handshake", "hello"):
            if now - link.created > self.handshake_timeout:
                self._retry(f"no WELCOME within {self.handshake_timeout:g} s" if self._heard_now else
                            f"nothing answered within {self.handshake_timeout:g} s")
        elif self._state == "ready":
            if now - link.last_rx > self.stall_timeout:
                self._retry(f"no traffic from the aggregator for {self.stall_timeout:g} s")
            elif not link.busy and now - max(link.last_tx, link.last_rx) > self._keepalive:
                link.queue(self._control(env.PING, {}))

    # -- I/O thread: frames and messages ------------------------------------
    def _receive(self) -> None:
        for _ in range(256):
            if self._sock is None or self._link is None:
                return
            try:
                parts = self._sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            if len(parts) != 1:
                self._retry("unexpected multi-part frame")
                return
            self._on_frame(self._link, parts[0].buffer)
            if len(parts[0]) >= LARGE_FRAME_BYTES and self._link is not None and self._link.channel.mid_message:
                yield_cpu()  # more of this message to come: let ZeroMQ's I/O thread read it meanwhile

    def _on_frame(self, link: Link, data: memoryview) -> None:
        link.last_rx = time.monotonic()
        self.heard = self._heard_now = True
        established = self._state == "ready"
        try:
            link.channel.feed(data)
            if not link.channel.handshake_done:
                if not link.channel.handshake():
                    link.queue_raw(link.channel.outgoing())
                    return
                link.queue_raw(link.channel.outgoing())
                if peer_role(link.channel.obj) != "aggregator":
                    self._fail(TransportError(
                        f"{self.endpoint} presented a certificate that is not an aggregator certificate "
                        "(extended key usage must be serverAuth alone); check the aggregator address", "wrong_role"))
                    return
                link.peer = peer_common_name(link.channel.obj)
                link.queue(self._control(env.HELLO, self._hello_meta))
                self._state = "hello"
            for raw in link.channel.messages():
                self._on_message(link, raw)
                if self._link is not link:
                    return
            if link.channel.peer_closed:
                raise PeerClosed("the aggregator closed the TLS session")
        except ssl.SSLError as exc:
            if established:
                self._retry(f"TLS stream broke ({exc.reason or exc})")
            else:
                self._fail(tls_refusal(exc))
        except PeerClosed:
            self._retry("the aggregator closed the session")
        except ProtocolError as exc:
            self._retry(f"undecodable stream from the aggregator ({exc})")
        except HookFailed:
            raise  # our own failure (the ledger cannot be written): stop, say why
        except Exception as exc:  # whatever the server's bytes caused, start a clean session
            self._retry(f"the aggregator's data raised {exc!r}")

    def close(self, timeout: float = 5.0) -> None:
        """Say BYE if connected (best effort), then stop; idempotent."""
        if self._state == "ready" and not self._stopping and self._crash is None:
            try:
                self._submit_bye()
            except TransportError:
                pass
        super().close(timeout)

    def _submit_bye(self) -> None:
        # a BYE is fire-and-forget: give the I/O thread a moment to flush it
        done = threading.Event()
        self._cmds.put(("bye", done))
        self._waker.wake()
        done.wait(0.5)

    def _on_crash(self, exc: BaseException) -> None:
        log.error("client I/O thread failed: %r", exc)
        self._fail(TransportError(f"transport I/O thread failed: {exc!r}", "crashed"))

    def _teardown(self) -> None:
        self._close_socket()
