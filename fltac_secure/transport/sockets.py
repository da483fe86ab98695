"""ZeroMQ socket options that bound memory and frame size.

High-water marks count frames, not bytes, and our frames are at most one
chunk, so ``HWM`` x chunk bounds what ZeroMQ queues per peer and direction.
``MAXMSGSIZE`` makes libzmq drop a connection that sends a larger frame before
any of our code (or OpenSSL) sees it: a pre-authentication memory bound.
"""

from __future__ import annotations

import zmq

from fltac_secure.transport.channel import CHUNK_BYTES, max_frame_bytes

HWM_FRAMES = 16


def configure_socket(sock: zmq.Socket, chunk_bytes: int = CHUNK_BYTES) -> None:
    """Apply frame-size and queue bounds, and no linger on close."""
    sock.setsockopt(zmq.MAXMSGSIZE, max_frame_bytes(chunk_bytes))
    sock.setsockopt(zmq.SNDHWM, HWM_FRAMES)
    sock.setsockopt(zmq.RCVHWM, HWM_FRAMES)
    sock.setsockopt(zmq.LINGER, 0)
