"""The wire ledger: one JSON line per message sent or received.

Every transport send/receive is reported as a WireEvent (see
``fltac_secure.transport.events``) and appended here; ``fltac audit`` reads it
back. Lines are appended with O_APPEND and fsync'd, so a crash loses at most
the line being written; a torn last line is skipped by the reader and counted.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from fltac_secure.errors import StateError

LEDGER_NAME = "ledger.jsonl"
FIELDS = ("time", "site", "peer", "direction", "kind", "round", "msg_id", "elements", "payload_bytes", "wire_bytes",
          "tensor_bytes")


@dataclass(frozen=True)
class LedgerEntry:
    """One message as the ledger records it (``site`` is the site that wrote the line)."""

    time: float
    site: str
    peer: str
    direction: str  # "sent" | "received"
    kind: str
    round: int
    msg_id: str
    elements: int
    payload_bytes: int
    wire_bytes: int
    tensor_bytes: int = -1  # tensor data alone; -1 in ledgers written before it was recorded


class Ledger:
    """Append-only JSONL ledger, safe to call from several threads."""

    def __init__(self, path: Path, site: str) -> None:
        self.path = Path(path)
        self.site = site
        self._lock = threading.Lock()
        self._folder_made = False  # made on the first line: a role that fails to start leaves nothing behind

    def record(self, event: Any) -> None:
        """Append a WireEvent (or any object with the ledger's fields)."""
        data = dataclasses.asdict(event) if dataclasses.is_dataclass(event) else dict(vars(event))
        row = {k: data.get(k) for k in FIELDS}
        row["site"] = self.site
        row["time"] = float(row["time"] if row["time"] is not None else time.time())
        row["msg_id"] = str(row["msg_id"])
        row["tensor_bytes"] = int(row["tensor_bytes"]) if row.get("tensor_bytes") is not None else -1
        self._append(row)

    def __call__(self, event: Any) -> None:  # usable directly as a transport ledger hook
        self.record(event)

    def _append(self, row: dict[str, Any]) -> None:
        line = (json.dumps(row, sort_keys=True, separators=(",", ":")) + "\n").encode()
        with self._lock:
            if not self._folder_made:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._folder_made = True
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)


@dataclass
class LedgerReadResult:
    entries: list[LedgerEntry]
    skipped: int  # torn or malformed lines


def _parse(line: str) -> LedgerEntry | None:
    try:
        row = json.loads(line)
        return LedgerEntry(
            time=float(row["time"]),
            site=str(row["site"]),
            peer=str(row["peer"]),
            direction=str(row["direction"]),
            kind=str(row["kind"]),
            round=int(row["round"]),
            msg_id=str(row["msg_id"]),
            elements=int(row["elements"]),
            payload_bytes=int(row["payload_bytes"]),
            wire_bytes=int(row["wire_bytes"]),
            tensor_bytes=int(row.get("tensor_bytes", -1)),
        )
    except (ValueError, KeyError, TypeError):
        return None


def iter_lines(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.strip():
                yield line


def read_ledger(path: Path) -> LedgerReadResult:
    """Read a ledger file; StateError if it is missing."""
    path = Path(path)
    if path.is_dir():
        path = path / LEDGER_NAME
    if not path.exists():
        raise StateError(f"no ledger at {path}; point --workspace at a site's or the aggregator's workspace")
    entries, skipped = [], 0
    for line in iter_lines(path):
        entry = _parse(line)
        if entry is None:
            skipped += 1
        else:
            entries.append(entry)
    return LedgerReadResult(entries, skipped)
