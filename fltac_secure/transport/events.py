"""What the transport reports to the ledger: one ``WireEvent`` per message.

The audit (``fltac audit``) must count exactly what crossed the wire, so every
message sent or received -- control messages included -- is reported with its
tensor element count, its encoded size and the bytes it cost on the wire.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Direction = Literal["sent", "received"]


@dataclass(frozen=True)
class WireEvent:
    """One message that crossed the wire, as the ledger records it.

    ``payload_bytes`` is the encoded message size (envelope prefix, JSON header
    and safetensors blob); ``tensor_bytes`` the tensor data within it.  ``wire_bytes`` is the ciphertext moved in that
    direction since the previous event in the same direction, plus the ZMTP
    frame headers: TLS record overhead and the TLS handshake are included, so
    the sum of ``wire_bytes`` over a session is the session's total traffic.
    """

    time: float
    peer: str
    direction: Direction
    kind: str
    round: int
    msg_id: int | str
    elements: int
    payload_bytes: int
    wire_bytes: int
    tensor_bytes: int = -1
    """Bytes of the tensors' data alone (no headers): what the shapes and dtypes imply; -1 where not known."""


LedgerHook = Callable[[WireEvent], None]


class HookFailed(Exception):
    """The ledger hook itself failed (a full disk, say): the process's own failure, never a peer's.

    The per-peer error boundaries let it through, so the I/O loop stops and
    every caller gets the reason, instead of every session being dropped in turn.
    """
