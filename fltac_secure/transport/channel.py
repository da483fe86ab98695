"""One TLS session over memory BIOs, with message framing: no sockets, no threads.

ZeroMQ carries the ciphertext as frames; this class turns frames into
plaintext messages and messages into frames.  It answers three problems the
prototype hit: a large message written into the SSL object in one go is slow
(it is written in ``chunk_bytes`` pieces and the outgoing BIO drained after
each); ``read()`` yields one 16 KiB record at a time (records are read straight
into a buffer preallocated from the announced size); and a hostile peer could
announce a huge message (the size is checked against the limit in force, which
is tiny until the peer is authenticated, before anything is allocated).
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable, Iterator

import numpy as np

from fltac_secure.errors import ProtocolError
from fltac_secure.transport.codec import PREFIX_SIZE, Buffer, parse_prefix

CHUNK_BYTES = 1 << 20
FRAME_MARGIN = 64 << 10  # TLS record overhead of one chunk (64 x 22 bytes) with room to spare
PREAUTH_MAX_BYTES = 64 << 10  # a HELLO/WELCOME is far smaller; nothing big before WELCOME


def max_frame_bytes(chunk_bytes: int = CHUNK_BYTES) -> int:
    """ZeroMQ MAXMSGSIZE that fits one chunk's ciphertext; larger frames are hostile."""
    return chunk_bytes + FRAME_MARGIN


def zmtp_overhead(n: int) -> int:
    """Bytes ZMTP adds to a frame of ``n`` bytes (flags + 1- or 8-byte length)."""
    return 2 if n < 256 else 9


def chunks(parts: Iterable[Buffer], size: int) -> Iterator[Buffer]:
    """Regroup ``parts`` into pieces of ``size`` bytes (last one shorter).

    Small parts are joined (one copy of at most ``size`` bytes); large parts
    are sliced without copying.
    """
    pending = bytearray()
    for part in parts:
        mv = memoryview(part).cast("B")
        while len(mv):
            if not pending and len(mv) >= size:
                yield mv[:size]
                mv = mv[size:]
                continue
            room = size - len(pending)
            pending += mv[:room]
            mv = mv[room:]
            if len(pending) == size:
                yield bytes(pending)
                pending.clear()
    if pending:
        yield bytes(pending)


class PeerClosed(Exception):
    """The peer closed the TLS session (close_notify) or the stream ended."""


class TlsChannel:
    """TLS over a pair of ``MemoryBIO``s plus a length-prefixed message assembler.

    ``rx_wire``/``tx_wire`` count ciphertext and ZMTP framing in each direction,
    handshake included, for the ledger's ``wire_bytes``.
    """

    def __init__(
        self,
        ctx: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
        max_message_bytes: int = PREAUTH_MAX_BYTES,
    ) -> None:
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self._in, self._out, server_side=server_side, server_hostname=server_hostname)
        self.max_message_bytes = max_message_bytes
        self.handshake_done = False
        self.rx_wire = 0
        self.tx_wire = 0
        self._prefix = bytearray(PREFIX_SIZE)
        self._got = 0
        self._buf: memoryview | None = None
        self.peer_closed = False  # close_notify came after the messages last returned

    # -- handshake and raw bytes ------------------------------------------
    def handshake(self) -> bool:
        """Advance the handshake; True once complete. ``ssl.SSLError`` on refusal."""
        if not self.handshake_done:
            try:
                self.obj.do_handshake()
            except ssl.SSLWantReadError:
                return False
            self.handshake_done = True
        return True

    def feed(self, frame: Buffer) -> None:
        """Hand one received ZeroMQ frame (ciphertext) to TLS."""
        n = len(memoryview(frame).cast("B"))
        self.rx_wire += n + zmtp_overhead(n)
        self._in.write(frame)

    def outgoing(self) -> bytes:
        """Drain the ciphertext TLS has produced (one ZeroMQ frame), or b""."""
        data = self._out.read()
        if data:
            self.tx_wire += len(data) + zmtp_overhead(len(data))
        return data

    # -- sending -------------------------------------------------------------
    def frames(self, parts: Iterable[Buffer], chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
        """Encrypt a message piecewise, yielding one frame per chunk (lazy)."""
        for piece in chunks(parts, chunk_bytes):
            self.obj.write(piece)
            frame = self.outgoing()
            if frame:
                yield frame

    # -- receiving -----------------------------------------------------------
    @property
    def mid_message(self) -> bool:
        """True while a message is partly received."""
        return self._got > 0

    def _read_into(self, view: memoryview) -> int:
        try:
            n = self.obj.read(len(view), view)
        except ssl.SSLWantReadError:
            return -1
        except ssl.SSLZeroReturnError:
            raise PeerClosed("peer closed the TLS session") from None
        if n == 0:
            raise PeerClosed("peer closed the TLS session")
        return n

    def messages(self) -> list[memoryview]:
        """Decrypt what has arrived and return the messages it completes.

        Raises ``ProtocolError`` when a prefix is bad or announces more than
        ``max_message_bytes`` (the stream cannot be trusted after that),
        ``PeerClosed`` on close_notify and ``ssl.SSLError`` on a broken stream.
        """
        done: list[memoryview] = []
        try:
            self._assemble(done)
        except PeerClosed:
            if not done:
                raise
            self.peer_closed = True  # hand over what arrived before the close; the caller ends the session
        return done

    def _assemble(self, done: list[memoryview]) -> None:
        if self.peer_closed:
            raise PeerClosed("peer closed the TLS session")
        while True:
            if self._buf is None:
                n = self._read_into(memoryview(self._prefix)[self._got :])
                if n < 0:
                    return
                self._got += n
                if self._got < PREFIX_SIZE:
                    continue
                header_len, payload_len = parse_prefix(self._prefix, max_bytes=self.max_message_bytes)
                # not zero-filled (bytearray(n) would be: one extra pass over the message); every
                # byte is written by TLS before the buffer is handed out
                self._buf = memoryview(np.empty(PREFIX_SIZE + header_len + payload_len, np.uint8))
                self._buf[:PREFIX_SIZE] = self._prefix
            if not self._fill(self._buf):
                return
            done.append(self._buf)
            self._buf, self._got = None, 0

    def _fill(self, buf: memoryview) -> bool:
        """Read records (16 KiB each) straight into ``buf``; True once it is full.

        The per-record loop is kept tight: it runs ~64 times per MiB on the I/O thread.
        """
        got, total, read = self._got, len(buf), self.obj.read
        try:
            while got < total:
                n = read(total - got, buf[got:])
                if n == 0:
                    raise PeerClosed("peer closed the TLS session")
                got += n
        except ssl.SSLWantReadError:
            return False
        except ssl.SSLZeroReturnError:
            raise PeerClosed("peer closed the TLS session") from None
        finally:
            self._got = got
        return True


def check_size(total: int, limit: int) -> None:
    """Refuse to send what the receiver would refuse (clear error at the sender)."""
    if total > limit:
        raise ProtocolError(f"message of {total} bytes exceeds the limit of {limit}", "too_large")
