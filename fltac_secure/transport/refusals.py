"""What a client waits for, and how a server's refusal becomes a clear error.

``Waiter`` is how an API thread waits for the I/O thread (an ACK, a reply or
WELCOME); ``tls_refusal`` turns the TLS alert a server sends when it refuses a
certificate (unknown CA, expired, revoked, missing, wrong purpose) into a final
``TransportError`` whose reason names the alert, e.g. ``tls_certificate_revoked``.
"""

from __future__ import annotations

import ssl
import threading
from dataclasses import dataclass, field

from fltac_secure.errors import FltacError, TransportError
from fltac_secure.transport.envelope import Message


@dataclass
class Waiter:
    """An API thread waiting for the I/O thread (an ACK, or a reply)."""

    event: threading.Event = field(default_factory=threading.Event)
    error: FltacError | None = None
    reply: Message | None = None

    def finish(self, error: FltacError | None = None, reply: Message | None = None) -> None:
        self.error, self.reply = error, reply
        self.event.set()

    def wait(self, timeout: float | None, what: str) -> Message | None:
        if not self.event.wait(timeout):
            raise TransportError(f"no {what} within {timeout} s", "timeout")
        if self.error is not None:
            raise self.error
        return self.reply


def tls_refusal(exc: ssl.SSLError) -> TransportError:
    """Turn an alert from the server into a clear, final error."""
    alert = (exc.reason or "tls_error").lower()
    for prefix in ("tlsv13_alert_", "tlsv1_alert_", "sslv3_alert_"):
        alert = alert.removeprefix(prefix)
    return TransportError(
        f"the aggregator refused the TLS session ({alert.replace('_', ' ')}): check that this site's "
        "certificate is signed by the federation CA, is a collaborator certificate, and is neither expired "
        f"nor revoked [{exc}]",
        f"tls_{alert}",
    )
