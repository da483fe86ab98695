"""Helpers for the transport tests: a federation PKI with good and bad certificates,
a loopback server, client factories and a raw TLS peer for hostile byte streams."""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
import zmq

from fltac_secure.pki import client_context, make_request, revoke, server_context, sign_request
from fltac_secure.pki.testing import FederationPKI, enroll_federation
from fltac_secure.transport import KindSpec, Message, TransportClient, TransportServer, register_kind, registered_kinds
from fltac_secure.transport.codec import PREFIX_SIZE, decode, parse_prefix
from fltac_secure.transport.envelope import tensors_like

FED = "testfed"
PLAN = "a" * 64
ROSTER = ["site1", "site2", "site3", "site4"]  # site3: expired cert; site4: revoked; site9: enrolled, not in roster
DATA = "TEST_DATA"

if DATA not in registered_kinds():
    register_kind(KindSpec(DATA, tensors_like({r"w\d*": (["float32"], 1)}), max_tensors=4))


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> FederationPKI:
    root = tmp_path_factory.mktemp("pki")
    past = datetime.now(timezone.utc) - timedelta(days=3)
    fed = enroll_federation(root, ["site1", "site2", "site4", "site9"], now=past, days=30)
    _key, csr, fp = make_request("site3", "collaborator", root / "site3")
    sign_request(csr, fed.ca_dir, fp, days=1, now=past)  # expired two days ago
    revoke("site4", fed.ca_dir)
    return fed


@pytest.fixture(scope="session")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> FederationPKI:
    return enroll_federation(tmp_path_factory.mktemp("other"), ["site1"])


def sctx(pki: FederationPKI) -> ssl.SSLContext:
    a = pki.paths("aggregator")
    return server_context(a.cert, a.key, a.ca, a.crl)


def cctx(pki: FederationPKI, name: str) -> ssl.SSLContext:
    p = pki.paths(name)
    return client_context(p.cert, p.key, p.ca)


def start_server(
    pki: FederationPKI, bind: str = "tcp://127.0.0.1:*", roster: list[str] = ROSTER, **kw: object
) -> TransportServer:
    opts: dict = {"handshake_timeout": 1.0, "idle_timeout": 30.0, "max_message_bytes": 8 << 20}
    opts.update(kw)
    return TransportServer(bind, sctx(pki), roster, FED, PLAN, **opts).start()


@pytest.fixture
def server(pki: FederationPKI) -> Iterator[TransportServer]:
    srv = start_server(pki)
    yield srv
    srv.close()


def make_client(endpoint: str, ctx: ssl.SSLContext, name: str = "site1", plan: str = PLAN, **kw: object) -> TransportClient:
    opts: dict = {"handshake_timeout": 2.0, "stall_timeout": 5.0, "max_attempts": 3, "backoff_base": 0.05}
    opts.update(kw)
    return TransportClient(endpoint, ctx, name, FED, plan, **opts)


def data_msg(sender: str, n: int = 16, value: float = 1.0) -> Message:
    return Message(DATA, FED, PLAN, sender, 1, "", {"note": "x"}, {"w": np.full(n, value, np.float32)})


def assert_serves_good_client(server: TransportServer, pki: FederationPKI, name: str = "site2") -> None:
    """The server still authenticates and serves a well-behaved peer."""
    with make_client(server.endpoint or "", cctx(pki, name), name) as client:
        client.connect()
        client.send(data_msg(name, value=7.0), timeout=10)
        got = server.recv(timeout=10)
        assert got is not None and got[0] == name
        assert float(got[1].tensors["w"][0]) == 7.0


def wait_for(pred, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


class RawPeer:
    """A hand-driven DEALER (+ optional TLS) that can send anything, for hostile-input tests."""

    def __init__(self, endpoint: str, ctx: ssl.SSLContext | None = None) -> None:
        self.zctx = zmq.Context()
        self.sock = self.zctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.out, server_hostname="localhost") if ctx else None
        self.plain = bytearray()

    def close(self) -> None:
        self.sock.close(0)
        self.zctx.term()

    def recv_frame(self, timeout: float) -> bytes | None:
        if self.sock.poll(int(timeout * 1000)):
            return self.sock.recv()
        return None

    def flush(self) -> None:
        data = self.out.read()
        if data:
            self.sock.send(data)

    def handshake(self, timeout: float = 5.0) -> None:
        assert self.obj is not None
        end = time.monotonic() + timeout
        while True:
            try:
                self.obj.do_handshake()
                self.flush()
                return
            except ssl.SSLWantReadError:
                self.flush()
            frame = self.recv_frame(max(0.0, end - time.monotonic()))
            if frame is None:
                raise TimeoutError("handshake")
            self.inc.write(frame)

    def send_plain(self, data: bytes, chunk: int = 1 << 20) -> None:
        assert self.obj is not None
        for i in range(0, len(data), chunk):
            self.obj.write(data[i : i + chunk])
            self.flush()

    def read_message(self, timeout: float = 5.0) -> Message | None:
        """Next message from the server (ssl.SSLError if it sent an alert)."""
        assert self.obj is not None
        end = time.monotonic() + timeout
        while True:
            if len(self.plain) >= PREFIX_SIZE:
                h, p = parse_prefix(bytes(self.plain[:PREFIX_SIZE]), max_bytes=1 << 30)
                if len(self.plain) >= PREFIX_SIZE + h + p:
                    raw = bytes(self.plain[: PREFIX_SIZE + h + p])
                    del self.plain[: PREFIX_SIZE + h + p]
                    return decode(raw, expect_federation=FED, expect_plan_hash=PLAN, max_bytes=1 << 30)
            try:
                chunk = self.obj.read(1 << 16)
                if not chunk:
                    return None
                self.plain += chunk
                continue
            except ssl.SSLWantReadError:
                pass
            frame = self.recv_frame(max(0.0, end - time.monotonic()))
            if frame is None:
                return None
            self.inc.write(frame)

    def read_until(self, kind: str, timeout: float = 5.0) -> Message | None:
        end = time.monotonic() + timeout
        while (msg := self.read_message(max(0.0, end - time.monotonic()))) is not None:
            if msg.kind == kind:
                return msg
        return None

    def authenticate(self, name: str = "site1") -> None:
        from fltac_secure.transport.codec import encode

        self.handshake()
        self.send_plain(encode(Message("HELLO", FED, PLAN, name, 0, "h1", {"name": name})))
        welcome = self.read_message()
        assert welcome is not None and welcome.kind == "WELCOME", welcome
