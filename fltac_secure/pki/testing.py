"""Test and demo helpers: enroll a whole federation through the real flow, and an in-memory
TLS handshake (no sockets) to check that two contexts accept or refuse each other.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from fltac_secure.pki.ca import CRL_FILE, init_ca, sign_request
from fltac_secure.pki.request import Role, make_request


@dataclass(frozen=True)
class SitePKI:
    """The four paths a site file's ``certs`` section needs."""

    cert: Path
    key: Path
    ca: Path
    crl: Path


@dataclass(frozen=True)
class FederationPKI:
    """A CA and one enrolled site per name, laid out as ``root/ca`` and ``root/<name>/``."""

    root: Path
    ca_dir: Path
    ca_cert: Path
    crl: Path
    aggregator: str
    collaborators: tuple[str, ...]

    def paths(self, name: str) -> SitePKI:
        d = self.root / name
        return SitePKI(cert=d / f"{name}.crt", key=d / f"{name}.key", ca=d / "ca.crt", crl=self.crl)


def enroll_site(
    fed_root: Path, ca_dir: Path, name: str, role: Role, *, now: datetime | None = None, days: int = 365
) -> Path:
    """make_request then sign_request with the printed fingerprint; returns the certificate path."""
    _key, csr, fp = make_request(name, role, fed_root / name)
    return sign_request(csr, ca_dir, fp, days=days, now=now)


def enroll_federation(
    root: Path,
    collaborators: Sequence[str],
    aggregator: str = "aggregator",
    *,
    now: datetime | None = None,
    days: int = 365,
) -> FederationPKI:
    """Create a CA under ``root/ca`` and enroll the aggregator and every collaborator."""
    root = Path(root)
    ca_dir = root / "ca"
    ca_cert = init_ca(ca_dir, now=now)
    enroll_site(root, ca_dir, aggregator, "aggregator", now=now, days=days)
    for name in collaborators:
        enroll_site(root, ca_dir, name, "collaborator", now=now, days=days)
    return FederationPKI(
        root=root, ca_dir=ca_dir, ca_cert=ca_cert, crl=ca_dir / CRL_FILE,
        aggregator=aggregator, collaborators=tuple(collaborators),
    )


def _pump(src: ssl.MemoryBIO, dst: ssl.MemoryBIO) -> bool:
    data = src.read()
    if data:
        dst.write(data)
    return bool(data)


def _step(obj: ssl.SSLObject) -> bool:
    """One handshake step; True once this side has finished."""
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        return False
    return True


def memory_handshake(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, server_hostname: str = "localhost"
) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """Run a TLS handshake between two contexts through memory BIOs; raise ssl.SSLError on failure.

    In TLS 1.3 the client finishes before the server has checked the client certificate, so
    the pump continues until the server is done too and one application byte has gone each way
    (that is when a client sees the server's rejection alert).
    """
    s_in, s_out, c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client = client_ctx.wrap_bio(c_in, c_out, server_side=False, server_hostname=server_hostname)
    s_done = c_done = False
    for _ in range(20):
        c_done = c_done or _step(client)
        moved = _pump(c_out, s_in)
        s_done = s_done or _step(server)
        moved = _pump(s_out, c_in) or moved
        if s_done and c_done and not moved:
            break
    else:
        raise ssl.SSLError("in-memory handshake did not complete")
    _exchange(client, c_out, server, s_in, b"c")
    _exchange(server, s_out, client, c_in, b"s")
    return server, client


def _exchange(src: ssl.SSLObject, src_out: ssl.MemoryBIO, dst: ssl.SSLObject, dst_in: ssl.MemoryBIO, b: bytes) -> None:
    src.write(b)
    _pump(src_out, dst_in)
    if dst.read(1) != b:
        raise ssl.SSLError("in-memory TLS exchange returned the wrong byte")
