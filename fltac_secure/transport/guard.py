"""Bounds the server keeps on peers it has not (yet) authorised.

``PendingTable`` answers the handshake flood: unauthenticated sessions are
bounded per source address and in total, and a new connection evicts the
oldest pending one (of its own source first) instead of being refused, so a
flood of stalled handshakes delays a real site by at most one handshake,
never by ``handshake_timeout``.  ``EventGate`` answers the ledger flood: a
refused peer's events reach the ledger at a bounded rate (a token bucket);
the rest are counted and summarised in the log.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict

log = logging.getLogger(__name__)


class PendingTable:
    """Unauthenticated sessions in arrival order, with their source addresses."""

    def __init__(self, max_total: int, max_per_source: int) -> None:
        if max_total < 1 or max_per_source < 1:
            raise ValueError("pending limits must be >= 1")
        self.max_total, self.max_per_source = max_total, max_per_source
        self._order: OrderedDict[bytes, str] = OrderedDict()
        self._per_source: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, ident: bytes) -> bool:
        return ident in self._order

    def add(self, ident: bytes, source: str) -> list[bytes]:
        """Record a new pending session; returns the identities to evict to make room (oldest first)."""
        evict: list[bytes] = []
        if self._per_source.get(source, 0) >= self.max_per_source:
            evict.append(next(i for i, s in self._order.items() if s == source))
        elif len(self._order) >= self.max_total:
            evict.append(next(iter(self._order)))
        for ident_out in evict:
            self.remove(ident_out)
        self._order[ident] = source
        self._per_source[source] = self._per_source.get(source, 0) + 1
        return evict

    def remove(self, ident: bytes) -> None:
        """Forget a session (authenticated, refused or dropped); unknown identities are ignored."""
        source = self._order.pop(ident, None)
        if source is None:
            return
        left = self._per_source[source] - 1
        if left:
            self._per_source[source] = left
        else:
            del self._per_source[source]


class EventGate:
    """A token bucket: at most ``rate`` events per second on average, bursts of ``burst``."""

    def __init__(self, rate: float, burst: int, what: str) -> None:
        self.rate, self.burst, self.what = rate, burst, what
        self._tokens = float(burst)
        self._last = time.monotonic()
        self._dropped = 0
        self._last_report = self._last

    def allow(self) -> bool:
        now = time.monotonic()
        self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._dropped and now - self._last_report >= 10.0:
            log.warning("%d %s not recorded in the last %.0f s (rate limit)", self._dropped, self.what,
                        now - self._last_report)  # fmt: skip
            self._dropped, self._last_report = 0, now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        self._dropped += 1
        return False
