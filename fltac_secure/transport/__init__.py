"""Secure transport: mutual TLS 1.3 over ZeroMQ with a strict wire format.

- ``envelope``: ``Message``, the kind registry (``register_kind``, ``KindSpec``).
- ``codec``: ``encode``/``decode`` (fixed prefix, JSON header, safetensors).
- ``server``/``client``: ``TransportServer`` (ROUTER) and ``TransportClient``
  (DEALER) with handshake, admission, chunked streaming, ACKs and reconnects.
- ``events``: ``WireEvent``, reported to the ledger hook for every message.
"""

from fltac_secure.transport.client import TransportClient
from fltac_secure.transport.codec import decode, encode
from fltac_secure.transport.envelope import (
    CONTROL_KINDS,
    KindSpec,
    Message,
    kind_spec,
    no_tensors,
    register_kind,
    registered_kinds,
    tensors_like,
    validate_message,
)
from fltac_secure.transport.events import LedgerHook, WireEvent
from fltac_secure.transport.server import TransportServer

__all__ = [
    "CONTROL_KINDS", "KindSpec", "LedgerHook", "Message", "TransportClient", "TransportServer", "WireEvent",
    "decode", "encode", "kind_spec", "no_tensors", "register_kind", "registered_kinds", "tensors_like",
    "validate_message",
]  # fmt: skip
