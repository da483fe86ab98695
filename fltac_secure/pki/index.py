"""The CA's index of issued certificates (``CA_DIR/index.json``), written atomically.

The index is the CA's memory: which names hold a live certificate (so a second one is
refused), and which serials are revoked (the source of the CRL).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from fltac_secure.errors import PKIError
from fltac_secure.pki.files import atomic_write, read_bytes

INDEX_NAME = "index.json"
INDEX_VERSION = 1


@dataclass
class IssuedCert:
    """One certificate the CA issued. ``serial`` is the integer serial number."""

    name: str
    role: str
    serial: int
    not_after: datetime
    revoked: bool = False
    not_before: datetime | None = None
    fingerprint: str = ""
    csr_fingerprint: str = ""
    revoked_at: datetime | None = None
    revocation_reason: str | None = None

    @property
    def serial_hex(self) -> str:
        return format(self.serial, "x")

    def is_live(self, now: datetime) -> bool:
        """Not revoked and not yet expired at ``now``."""
        return not self.revoked and self.not_after > now

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["serial"] = self.serial_hex
        for k in ("not_after", "not_before", "revoked_at"):
            d[k] = None if d[k] is None else d[k].isoformat()
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "IssuedCert":
        def ts(v: str | None) -> datetime | None:
            return None if v is None else datetime.fromisoformat(v)

        return cls(
            name=d["name"],
            role=d["role"],
            serial=int(d["serial"], 16),
            not_after=datetime.fromisoformat(d["not_after"]),
            revoked=bool(d["revoked"]),
            not_before=ts(d.get("not_before")),
            fingerprint=d.get("fingerprint", ""),
            csr_fingerprint=d.get("csr_fingerprint", ""),
            revoked_at=ts(d.get("revoked_at")),
            revocation_reason=d.get("revocation_reason"),
        )


@dataclass
class CAIndex:
    """Everything the CA records between commands; ``crl_number`` grows with each CRL."""

    ca_name: str
    crl_number: int = 0
    issued: list[IssuedCert] = field(default_factory=list)

    def live_for(self, name: str, now: datetime) -> list[IssuedCert]:
        return [c for c in self.issued if c.name == name and c.is_live(now)]

    def revoked(self) -> list[IssuedCert]:
        return [c for c in self.issued if c.revoked]


def load_index(ca_dir: Path) -> CAIndex:
    path = Path(ca_dir) / INDEX_NAME
    try:
        raw = json.loads(read_bytes(path, "CA index"))
        if raw.get("version") != INDEX_VERSION:
            raise PKIError(f"{path}: unsupported index version {raw.get('version')!r} (expected {INDEX_VERSION})")
        return CAIndex(
            ca_name=raw["ca_name"],
            crl_number=int(raw["crl_number"]),
            issued=[IssuedCert.from_json(d) for d in raw["issued"]],
        )
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        if isinstance(e, PKIError):
            raise
        raise PKIError(f"{path} is corrupt ({type(e).__name__}: {e}); restore it from a backup") from e


def save_index(ca_dir: Path, index: CAIndex) -> None:
    data = {
        "version": INDEX_VERSION,
        "ca_name": index.ca_name,
        "crl_number": index.crl_number,
        "issued": [c.to_json() for c in index.issued],
    }
    atomic_write(Path(ca_dir) / INDEX_NAME, (json.dumps(data, indent=2) + "\n").encode(), mode=0o644)
