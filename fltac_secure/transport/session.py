"""Session bookkeeping shared by server and client: one ``Link`` per TLS session.

A ``Link`` owns a ``TlsChannel`` and the queue of messages waiting to go out
on it.  Messages go out strictly one after another (their chunks never
interleave in the TLS stream), at most ``budget`` frames per ``flush`` so one
large upload cannot starve the other peers of an I/O loop.  The link reports a
``WireEvent`` for each message fully handed to ZeroMQ and each one received.

Bounds: a link holds at most ``MAX_JOBS`` queued messages (a peer that stops
reading while it keeps sending is ``backlogged`` and its owner ends the
session); a send to a ZeroMQ identity that has gone away marks the link
``gone`` instead of raising; reported events carry at most ``MAX_FIELD_CHARS``
of any peer-controlled string.

Also here: ``Waker`` (a pipe that lets API threads wake the I/O thread's poll).
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import zmq

from fltac_secure.transport.channel import CHUNK_BYTES, TlsChannel
from fltac_secure.transport.codec import encode_parts
from fltac_secure.transport.envelope import Message
from fltac_secure.transport.events import Direction, HookFailed, LedgerHook, WireEvent
from fltac_secure.transport.sockets import LARGE_FRAME_BYTES, yield_cpu


MAX_JOBS = 1024
"""Messages one link may have queued; more means the peer sends but does not read."""
MAX_FIELD_CHARS = 64
"""Longest peer-controlled string (peer, kind, msg_id) a ``WireEvent`` carries."""


def _short(value: int | str) -> int | str:
    return value[:MAX_FIELD_CHARS] if isinstance(value, str) else value


class Waker:
    """A self-pipe: any thread calls ``wake()``; the I/O thread polls ``fileno``."""

    def __init__(self) -> None:
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)

    @property
    def fileno(self) -> int:
        return self._r

    def wake(self) -> None:
        try:
            os.write(self._w, b"x")
        except BlockingIOError:
            pass  # already woken: the pipe is full of wake-ups
        except OSError:
            pass  # closed during shutdown

    def drain(self) -> None:
        try:
            while os.read(self._r, 4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass


@dataclass
class _Job:
    msg: Message
    payload_bytes: int
    frames: Iterator[bytes]


class Link:
    """One TLS session with one peer: channel, outgoing queue, timestamps, events."""

    def __init__(
        self,
        channel: TlsChannel,
        *,
        route: list[bytes],
        peer: str,
        ledger_hook: LedgerHook | None,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        self.channel = channel
        self.route = route  # frames prepended on send (the ROUTER identity; empty for DEALER)
        self.peer = peer
        self.name: str | None = None  # authenticated name, set after WELCOME
        self.created = self.last_rx = self.last_tx = time.monotonic()
        self.established: float | None = None
        self.expires: float | None = None
        self.closing = False  # drop once the queue is flushed (after REJECT/BYE)
        self.blocked = False  # the last flush hit the high-water mark
        self.gone = False  # ZeroMQ says the peer's connection no longer exists
        self.source = ""  # the peer's address, as ZeroMQ reports it (server side)
        self.serial: int | None = None  # the authenticated certificate's serial number (server side)
        self.held: tuple[str, Any, float] | None = None  # (name, certificate, deadline): HELLO waiting on an old session
        self._hook = ledger_hook
        self._chunk = chunk_bytes
        self._jobs: deque[_Job] = deque()
        self._job: _Job | None = None
        self._frame: bytes | None = None
        self._rx_mark = 0
        self._tx_mark = 0

    def set_hook(self, hook: LedgerHook | None) -> None:
        """Where this link's events go from now on (a rate-limited hook until the peer is authorised)."""
        self._hook = hook

    # -- outgoing ------------------------------------------------------------
    def queue(self, msg: Message) -> None:
        """Queue ``msg``; it is encrypted lazily, chunk by chunk, during ``flush``."""
        parts = encode_parts(msg)
        size = sum(memoryview(p).nbytes for p in parts)
        self._jobs.append(_Job(msg, size, self.channel.frames(parts, self._chunk)))

    def queue_raw(self, frame: bytes) -> None:
        """Queue ciphertext produced outside a message (handshake flights, alerts)."""
        if frame:
            self._jobs.append(_Job(Message("BYE", "", "", ""), -1, iter([frame])))

    @property
    def backlogged(self) -> bool:
        """More than ``MAX_JOBS`` messages queued: the peer is not reading what it asks for."""
        return len(self._jobs) > MAX_JOBS

    @property
    def busy(self) -> bool:
        """True while something is queued or partly sent."""
        return bool(self._jobs or self._job or self._frame)

    def flush(self, sock: zmq.Socket, budget: int = 8) -> None:
        """Send up to ``budget`` frames without blocking; sets ``blocked`` if ZeroMQ pushed back."""
        self.blocked = False
        for _ in range(budget):
            if self._frame is None and not self._next_frame():
                return
            assert self._frame is not None
            large = len(self._frame) >= LARGE_FRAME_BYTES
            try:
                sock.send_multipart([*self.route, self._frame], flags=zmq.NOBLOCK, copy=not large)
            except zmq.Again:
                self.blocked = True
                return
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EHOSTUNREACH:
                    raise
                self.gone = True  # ROUTER_MANDATORY: the peer's connection is gone; its owner drops the link
                return
            self._frame = None
            self.last_tx = time.monotonic()
            if large:
                yield_cpu()  # let ZeroMQ's I/O thread put it on the wire now

    def _next_frame(self) -> bool:
        while True:
            if self._job is None:
                if not self._jobs:
                    return False
                self._job = self._jobs.popleft()
            frame = next(self._job.frames, None)
            if frame is not None:
                self._frame = frame
                return True
            job, self._job = self._job, None
            if job.payload_bytes >= 0:
                self.report_message("sent", job.msg, job.payload_bytes)

    # -- incoming / events --------------------------------------------------
    def report_message(self, direction: Direction, msg: Message, payload_bytes: int) -> None:
        """Emit the ``WireEvent`` of a decoded or sent message."""
        self.report(direction, msg.kind, msg.round, msg.msg_id, msg.elements, payload_bytes, msg.tensor_bytes)

    def report(
        self, direction: Direction, kind: str, round_: int, msg_id: int | str, elements: int, payload_bytes: int,
        tensor_bytes: int = -1,
    ) -> None:
        """Emit a ``WireEvent``; wire bytes are the ciphertext since the last event."""
        if direction == "sent":
            wire, self._tx_mark = self.channel.tx_wire - self._tx_mark, self.channel.tx_wire
        else:
            wire, self._rx_mark = self.channel.rx_wire - self._rx_mark, self.channel.rx_wire
        if self._hook is None:
            return
        try:
            self._hook(
                WireEvent(
                    time=time.time(), peer=str(_short(self.name or self.peer)), direction=direction,
                    kind=str(_short(kind)), round=round_, msg_id=_short(msg_id), elements=elements,
                    payload_bytes=payload_bytes, wire_bytes=wire, tensor_bytes=tensor_bytes,
                )  # fmt: skip
            )
        except Exception as exc:
            raise HookFailed(f"recording a message in the ledger failed: {exc!r}") from exc
