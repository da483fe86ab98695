"""ZeroMQ socket options that bound memory and frame size.

High-water marks count frames, not bytes, and our frames are at most one
chunk, so ``HWM`` x chunk bounds what ZeroMQ queues per peer and direction.
``MAXMSGSIZE`` makes libzmq drop a connection that sends a larger frame before
any of our code (or OpenSSL) sees it: a pre-authentication memory bound.

Also here: ``yield_cpu``, the hand-off to ZeroMQ's I/O thread after a large frame.
"""

from __future__ import annotations

import os

import zmq

from fltac_secure.transport.channel import CHUNK_BYTES, max_frame_bytes

HWM_FRAMES = 16


def configure_socket(sock: zmq.Socket, chunk_bytes: int = CHUNK_BYTES) -> None:
    """Apply frame-size and queue bounds, and no linger on close."""
    sock.setsockopt(zmq.MAXMSGSIZE, max_frame_bytes(chunk_bytes))
    sock.setsockopt(zmq.SNDHWM, HWM_FRAMES)
    sock.setsockopt(zmq.RCVHWM, HWM_FRAMES)
    sock.setsockopt(zmq.LINGER, 0)


LARGE_FRAME_BYTES = 64 << 10  # frames this large are sent zero-copy and followed by yield_cpu()
_sched_yield = getattr(os, "sched_yield", lambda: None)


def yield_cpu() -> None:
    """Let another runnable thread on this CPU run now (``sched_yield``; no-op where missing).

    The I/O thread calls this after it hands a large frame to ZeroMQ or has
    decrypted one: ZeroMQ's own I/O thread, woken to move that frame, is often
    queued on this same CPU and would otherwise wait until our timeslice ends
    (1-3 ms) while the peer has nothing to do.  One syscall per frame of up to
    1 MiB; it returns at once when nothing else is runnable on this CPU.
    """
    _sched_yield()


def bind_refusal(endpoint: str, exc: zmq.ZMQError) -> str:
    """One line for an endpoint the server cannot bind: why, and what to change."""
    if exc.errno == zmq.EADDRINUSE:
        return (f"cannot bind {endpoint}: the address is in use (another aggregator, or another program, "
                "is listening there); stop it, or set `bind` in the aggregator's site file to a free port "
                "and `aggregator` in every site's file to match")
    if exc.errno == zmq.EADDRNOTAVAIL:
        return (f"cannot bind {endpoint}: no network interface of this machine has that address; "
                "bind one of its own addresses (or 0.0.0.0 for all)")
    return f"cannot bind {endpoint}: {exc.strerror}; check `bind` in the aggregator's site file"
