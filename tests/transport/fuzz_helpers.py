"""A fuzz harness for ``TransportServer``: random and structure-aware garbage at every stage.

A *campaign* drives one running server on loopback with *scenarios*, each a short
function that opens one or more DEALER connections (its own ZeroMQ identities),
brings them to a stage -- nothing, mid-handshake, handshake done but no HELLO,
authenticated after WELCOME -- and then misbehaves: random bytes, empty and
multi-part frames, frames near ``MAXMSGSIZE``, mutated TLS flights, mutated
JSON headers (huge ints, ``1e400``, deep nesting, duplicate keys, wrong types,
huge strings), mutated safetensors headers (absurd shapes, dtypes, offsets),
messages split, batched and truncated at random points; the peer then vanishes
at once, drains the replies and closes, or lingers in a pool from which it
vanishes later (many identities connecting and vanishing at the same time).

Every choice comes from a ``random.Random``: the campaign seed picks the
scenarios and each step's own seed, so a step can be replayed alone
(``replay_once(pki, label, seed)``; the test module reads ``FLTAC_FUZZ_REPLAY``).

After every step the campaign checks the server's I/O thread.  When it has
died, the exception is recorded as a ``Finding`` (signature = exception type,
message with numbers blanked, innermost ``fltac_secure`` frame), the recent
steps are replayed one at a time on fresh servers to name the scenario that
reproduces it alone (triage), and the campaign continues on a fresh server, so
one run lists every distinct crash rather than only the first.
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import random
import re
import ssl
import struct
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import zmq

from fltac_secure.errors import ProtocolError
from fltac_secure.federation.ledger import Ledger
from fltac_secure.transport import Message, TransportServer
from fltac_secure.transport.channel import PREAUTH_MAX_BYTES, max_frame_bytes
from fltac_secure.transport.codec import MAGIC, MAX_HEADER_BYTES, PREFIX, PREFIX_SIZE, VERSION, encode

from transport_helpers import DATA, FED, PLAN, RawPeer, cctx, sctx, start_server

SERVER_OPTS: dict = {"handshake_timeout": 1.0, "idle_timeout": 30.0, "max_message_bytes": 8 << 20, "max_pending": 64}
GOOD_NAMES = ("site1", "site2")
POOL_CAP = 32  # lingering connections at once (each a ZeroMQ identity the server knows)



class ServerGone(EOFError):
    """The server's I/O thread died while a peer waited for it (the campaign records why)."""


# peer-side failures that are the expected outcome of sending garbage (the server hung up,
# sent an alert, or simply did not answer); anything else raised by a scenario is a harness bug
EXPECTED = (ssl.SSLError, TimeoutError, zmq.ZMQError, EOFError)


def rss_bytes() -> int:
    """Resident set size of this process (server thread included), from /proc/self/statm."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------------------------------------
# a DEALER peer sharing one ZeroMQ context, with send timeouts so a dead server never blocks us


class FuzzPeer(RawPeer):
    def __init__(
        self, zctx: zmq.Context, endpoint: str, ctx: ssl.SSLContext | None = None, *,
        routing_id: bytes | None = None, origin: str = "", alive: Callable[[], bool] | None = None,
        sndhwm: int = 256, sndtimeo_ms: int = 300,
    ) -> None:  # fmt: skip
        self.zctx, self.alive = zctx, alive
        self.sock = zctx.socket(zmq.DEALER)
        for opt, value in ((zmq.LINGER, 0), (zmq.SNDTIMEO, sndtimeo_ms), (zmq.SNDHWM, sndhwm), (zmq.RCVHWM, 256)):
            self.sock.setsockopt(opt, value)
        if routing_id is not None:
            self.sock.setsockopt(zmq.ROUTING_ID, routing_id)
        self.sock.connect(endpoint)
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.out, server_hostname="localhost") if ctx else None
        self.plain = bytearray()
        self.origin = origin
        self.routing_id = routing_id
        self.authenticated = False
        self.closed = False

    def close(self) -> None:  # the shared context is terminated by the arena
        if not self.closed:
            self.closed = True
            self.sock.close(0)

    def recv_frame(self, timeout: float) -> bytes | None:
        """Next frame within ``timeout`` s; ``ServerGone`` as soon as the server has crashed."""
        end = time.monotonic() + timeout
        while True:
            if self.sock.poll(int(max(0.0, min(0.05, end - time.monotonic())) * 1000)):
                return self.sock.recv()
            if self.alive is not None and not self.alive():
                raise ServerGone("the server I/O thread is gone")
            if time.monotonic() >= end:
                return None

    def send_frames(self, *frames: bytes) -> None:
        if len(frames) == 1:
            self.sock.send(frames[0])
        else:
            self.sock.send_multipart(list(frames))

    def client_hello(self) -> bytes:
        """Start the handshake; the first flight (ClientHello) is returned, not sent."""
        assert self.obj is not None
        try:
            self.obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        return self.out.read()

    def pump_in(self, timeout: float, quiet: float = 0.02) -> int:
        """Feed what the server sends to TLS (or drop it) until ``quiet`` s of silence after
        the first frame, at most ``timeout`` s; returns the number of frames."""
        n, end = 0, time.monotonic() + timeout
        while (frame := self.recv_frame(max(0.0, min(end - time.monotonic(), quiet if n else timeout)))) is not None:
            n += 1
            if self.obj is not None:
                self.inc.write(frame)
            if time.monotonic() >= end:
                break
        return n

    def write_pieces(self, data: bytes, cuts: list[int], batch: bool) -> None:
        """Write ``data`` to TLS cut at ``cuts``: one frame per piece, or all pieces in one frame."""
        assert self.obj is not None
        bounds = [0, *sorted(c for c in cuts if 0 < c < len(data)), len(data)]
        for a, b in zip(bounds, bounds[1:]):
            if b > a:
                for i in range(a, b, 1 << 20):
                    piece = data[i : min(b, i + (1 << 20))]
                    if self.out.pending + len(piece) > 1 << 20:  # keep frames under MAXMSGSIZE
                        self.flush()
                    self.obj.write(piece)
                    if not batch:
                        self.flush()
        self.flush()


def try_authenticate(peer: FuzzPeer, name: str, *, claim: str | None = None, timeout: float = 1.0) -> Message | None:
    """Handshake and HELLO; the server's first message (WELCOME, REJECT) or None."""
    claim = claim or name
    peer.handshake(timeout)
    peer.send_plain(encode(Message("HELLO", FED, PLAN, claim, 0, f"h-{id(peer)}", {"name": claim})))
    first = peer.read_message(timeout)
    peer.authenticated = first is not None and first.kind == "WELCOME"
    return first


# ---------------------------------------------------------------------------------------------
# structure-aware garbage: raw JSON text (so values Python's json would never write can be sent)


def _deep_list(d: int) -> str:
    return "[" * d + "]" * d


def _deep_obj(d: int) -> str:
    return '{"a":' * d + "1" + "}" * d


NASTY_JSON: list[Callable[[random.Random], str]] = [
    lambda r: str(10**400),
    lambda r: "9" * r.randint(4301, 6000),  # above Python's int-string digit limit
    lambda r: "-" + "9" * 4400,
    lambda r: str(2**64),
    lambda r: str(2**70),
    lambda r: str(-(2**63) - 1),
    lambda r: r.choice(["-1", "0", "1", "-0", "0.5", "-0.0", "1.0", "1e2"]),
    lambda r: r.choice(["1e400", "-1e400", "1e-400", "NaN", "Infinity", "-Infinity"]),
    lambda r: r.choice(["true", "false", "null", '""']),
    lambda r: json.dumps("x" * r.choice([4097, 5000, 70000])),
    lambda r: r.choice(['"\\ud800"', '"\\udfff\\ud800"', '"\\u0000"', '"\u00e9\u202e"', '"' + "\\\\" * 100 + '"']),
    lambda r: r.choice(["[]", "{}", "[[]]", "[1,[2,[3]]]", '{"a":{"b":1}}', '[1,"a",null,1.5,true]']),
    lambda r: json.dumps(list(range(r.choice([17, 1000, 65537, 70000])))),
    lambda r: _deep_list(r.choice([3, 50, 1000, 100000])),
    lambda r: _deep_obj(r.choice([3, 50, 1000, 30000])),
    lambda r: r.choice(["[1,", '{"', '"unterminated', "01", "1.", ".5", "+1", "0x10", "'s'", "[1 2]", "{1:2}", ""]),
]


def nasty(r: random.Random) -> str:
    return r.choice(NASTY_JSON)(r)


def nasty_key(r: random.Random) -> str:
    return r.choice(["", "a", "ack", "nack", "name", "reason", "__proto__", "k" * r.choice([100, 5000]),
                     "\ud800", "\u0000", "kind", "meta"])  # fmt: skip


def render(pairs: list[tuple[str, str]]) -> bytes:
    """A JSON object from (key, raw value text) pairs; duplicate keys and raw values kept."""
    body = ",".join(f"{json.dumps(k)}:{v}" for k, v in pairs)
    return ("{" + body + "}").encode("utf-8", "surrogatepass")


_IDS = itertools.count(1)


def header_pairs(kind: str, sender: str, *, msg_id: object = None, round_: object = 1, meta: str = "{}") -> list:
    mid = json.dumps(msg_id if msg_id is not None else f"fz-{next(_IDS)}")
    return [("kind", json.dumps(kind)), ("federation", json.dumps(FED)), ("plan_hash", json.dumps(PLAN)),
            ("sender", json.dumps(sender)), ("round", json.dumps(round_)), ("msg_id", mid), ("meta", meta)]  # fmt: skip


KINDS = [DATA, DATA, "PING", "ACK", "NACK", "BYE", "HELLO", "WELCOME", "REJECT", "PONG", "NOT_A_KIND", "data", ""]


def mutate_pairs(r: random.Random, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    pairs = list(pairs)
    for _ in range(r.randint(1, 3)):
        op = r.randrange(9)
        i = r.randrange(len(pairs)) if pairs else 0
        if op <= 2 and pairs:  # a field gets a nasty value
            pairs[i] = (pairs[i][0], nasty(r))
        elif op == 3:  # meta gets nasty entries (ack/nack/name included)
            entries = [f"{json.dumps(nasty_key(r), ensure_ascii=False)}:{nasty(r)}" for _ in range(r.randint(1, 4))]
            meta = ",".join(entries)
            pairs = [(k, "{" + meta + "}" if k == "meta" else v) for k, v in pairs]
        elif op == 4 and pairs:  # duplicate key
            pairs.insert(r.randrange(len(pairs) + 1), (pairs[i][0], r.choice([pairs[i][1], nasty(r)])))
        elif op == 5 and pairs:
            del pairs[i]
        elif op == 6:
            pairs.append((nasty_key(r), nasty(r)))
        elif op == 7 and pairs:
            pairs[i] = (pairs[i][0].upper(), pairs[i][1])
        else:  # msg_id or round of an odd type
            key = r.choice(["msg_id", "round"])
            val = r.choice(["1.5", "true", "null", "[]", "{}", '""', "-1", str(10**400), str(2**70),
                            '"' + "m" * 5000 + '"', '"\\ud800"', str(2**63), "1e400"])  # fmt: skip
            pairs = [(k, val if k == key else v) for k, v in pairs]
    return pairs


def mutate_bytes(r: random.Random, raw: bytes) -> bytes:
    op = r.randrange(8)
    if op == 0 and raw:
        return raw[: r.randrange(len(raw))]
    if op == 1 and raw:
        b = bytearray(raw)
        for _ in range(r.randint(1, 8)):
            b[r.randrange(len(b))] = r.randrange(256)
        return bytes(b)
    if op == 2:
        i = r.randrange(len(raw) + 1)
        return raw[:i] + r.choice([b"\xff\xfe", b"\xc0\x80", b"\xed\xa0\x80", b"\x00", b"\x80"]) + raw[i:]
    if op == 3:
        return b"\xef\xbb\xbf" + raw
    if op == 4:
        return raw + r.choice([b" x", b"{}", b"\x00", b"]", b',"a":1}'])
    if op == 5:
        return b"[" + raw + b"]"
    if op == 6:
        return r.choice([b"null", b"1", b'"s"', b"[]", b""])
    return raw


def frame_message(
    r: random.Random, header: bytes, payload: bytes = b"", *, lie: bool = True, limit: int = 8 << 20
) -> bytes:
    """Prefix + header (space-padded to 8) + payload; sometimes the prefix lies."""
    if r.random() < 0.8:
        header += b" " * (-(PREFIX_SIZE + len(header)) % 8)
    hlen, plen = len(header), len(payload)
    magic, version, reserved = MAGIC, VERSION, 0
    if lie and r.random() < 0.25:
        which = r.randrange(6)
        if which == 0:
            hlen = max(0, hlen + r.choice([-9, -1, 1, 8, 1000]))
        elif which == 1:
            plen = max(0, plen + r.choice([-9, -1, 1, 8, 1000]))
        elif which == 2:
            hlen = r.choice([MAX_HEADER_BYTES + 1, 2**64 - 1, 0])
        elif which == 3:
            plen = r.choice([2**64 - 1, max(0, limit - PREFIX_SIZE - hlen + 1), 2**40])
        elif which == 4:
            magic = r.choice([b"FLT2", b"\x00\x00\x00\x00", b"flt1", r.randbytes(4)])
        else:
            version, reserved = r.choice([(0, 0), (2, 0), (65535, 0), (1, 1), (1, 65535)])
    return PREFIX.pack(magic, version, reserved, hlen, plen) + header + payload


# -- safetensors blobs ------------------------------------------------------------------------

ST_SIZES = {"F32": 4, "F64": 8, "I32": 4, "U8": 1, "BOOL": 1, "F16": 2, "I64": 8}
BAD_SHAPES = [
    [0, 10**30], [0, 2**64], [0, 2**63 - 1], [0, 2**62], [0, 2**40, 2**40], [-1], [2**64], [2**63], [0] * 17,
    [1] * 16, [], [0], [1.5], [True], [1e300], "5", None, 5, "12", [[1]], {}, [0, "9" * 5000],
]  # fmt: skip
BAD_DTYPES = ["BF16", "F8_E4M3", "F8_E5M2", "C64", "f32", "", "float32", "O", "<f4", "F32 ", 1, None, ["F32"], {"a": 1}]
BAD_OFFSETS = [[0, 2**64], [5, 3], [-1, 3], [0], [0, 1, 2], None, 7, [0, 10**30], [1.5, 2], [True, False], ["0", "4"],
               [2**63, 2**63], [0, "9" * 5000]]  # fmt: skip


def _raw(v: object) -> str:
    """JSON text for ``v``; a string of 4300+ digits becomes a bare (oversized) integer literal."""
    if isinstance(v, str) and len(v) > 4300 and v.isdigit():
        return v
    if isinstance(v, list):
        return "[" + ",".join(_raw(x) for x in v) + "]"
    return json.dumps(v)


def safetensors_blob(r: random.Random) -> bytes:
    names = [f"w{i}" if i else "w" for i in range(r.choice([0, 1, 1, 2, 3, 5]))]
    entries: dict[str, dict[str, object]] = {}
    data = bytearray()
    for name in names:
        dtype = r.choice(["F32", "F32", "F32", *ST_SIZES])
        n = r.choice([0, 1, 3, 16])
        chunk = np.arange(n, dtype=np.float32).tobytes() if dtype == "F32" else r.randbytes(n * ST_SIZES[dtype])
        if dtype == "F32" and n and r.random() < 0.2:
            chunk = np.array([np.nan, np.inf, -np.inf, 1e38][: max(1, n % 4)] * n, np.float32)[:n].tobytes()
        entries[name] = {"dtype": dtype, "shape": [n], "data_offsets": [len(data), len(data) + len(chunk)]}
        data += chunk
    extra: list[tuple[str, str]] = []
    header_override: bytes | None = None
    for _ in range(r.randint(0 if entries else 1, 3)):
        op = r.randrange(9)
        name = r.choice(names) if names else None
        if op <= 1 and name:  # absurd shape, kept consistent with the byte span when that is possible
            shape = r.choice(BAD_SHAPES)
            entries[name]["shape"] = shape
            if isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape) and r.random() < 0.7:
                count = 1
                for d in shape:
                    count *= d
                size = count * ST_SIZES.get(str(entries[name].get("dtype")), 4)
                offs = entries[name].get("data_offsets")
                if size <= 4096 and isinstance(offs, list) and offs and type(offs[0]) is int:
                    entries[name]["data_offsets"] = [offs[0], offs[0] + size]
                    data = _relay(entries, r)  # re-lay the whole blob so offsets stay contiguous
        elif op == 2 and name:
            entries[name]["dtype"] = r.choice(BAD_DTYPES)
        elif op == 3 and name:
            entries[name]["data_offsets"] = r.choice(BAD_OFFSETS)
        elif op == 4 and name:
            entries[name].pop(r.choice(["dtype", "shape", "data_offsets"]), None)
            if r.random() < 0.5:
                entries[name]["extra"] = 1
        elif op == 5:
            extra.append((r.choice(["__metadata__", "w", "w1", "", "bad name!", "x" * 300, "../../etc"]),
                          r.choice(['{"a":"b"}', "[]", "1", "null", '{"dtype":"F32","shape":[0],"data_offsets":[0,0]}',
                                    nasty(r)])))  # fmt: skip
        elif op == 6 and name:
            extra.append((name, _entry_text(entries[name])))  # duplicate tensor name
        elif op == 7:
            header_override = r.choice([b"[]", b'"x"', b"1", b"null", b"{", _deep_obj(5000).encode()])
        else:
            data = data[: r.randrange(len(data) + 1)] if r.random() < 0.5 else data + r.randbytes(r.choice([1, 3, 8]))
    pairs = [(k, _entry_text(v)) for k, v in entries.items()] + extra
    r.shuffle(pairs)
    header = header_override if header_override is not None else render(pairs)
    if r.random() < 0.7:
        header += b" " * (-len(header) % 8)
    n = len(header)
    if r.random() < 0.15:
        n = r.choice([0, n + 1, max(0, n - 1), 2**64 - 1, (16 << 20) + 1, n + len(data)])
    return struct.pack("<Q", n) + header + bytes(data)


def _entry_text(entry: dict[str, object]) -> str:
    return "{" + ",".join(f"{json.dumps(k)}:{_raw(v)}" for k, v in entry.items()) + "}"


def _relay(entries: dict[str, dict[str, object]], r: random.Random) -> bytearray:
    """Recompute contiguous offsets for entries whose offsets are sane; random bytes as data."""
    out, pos = bytearray(), 0
    for e in entries.values():
        offs = e.get("data_offsets")
        sane = isinstance(offs, list) and len(offs) == 2 and all(type(x) is int for x in offs)
        if sane and 0 <= offs[1] - offs[0] <= 4096:  # type: ignore[index]
            size = offs[1] - offs[0]
            e["data_offsets"] = [pos, pos + size]
            out += r.randbytes(size)
            pos += size
    return out


# -- whole post-WELCOME messages --------------------------------------------------------------


def post_message(r: random.Random, sender: str) -> tuple[str, bytes]:
    """One hostile (or occasionally valid but odd) plaintext message; (class, bytes)."""
    c = r.randrange(10)
    if c == 0:
        return "random_plaintext", r.randbytes(r.choice([1, 7, 23, 24, 100, 4096]))
    if c in (1, 2, 3):
        kind = r.choice(KINDS)
        meta = "{}"
        if kind in ("ACK", "NACK"):
            meta = "{" + f'"{kind.lower()}":{nasty(r) if r.random() < 0.7 else json.dumps("x")}' + "}"
        pairs = header_pairs(kind, sender, meta=meta)
        if kind not in ("ACK", "NACK") or r.random() < 0.5:  # else the nasty ack/nack is the mutation
            pairs = mutate_pairs(r, pairs)
        header = render(pairs)
        if r.random() < 0.3:
            header = mutate_bytes(r, header)
        return "json_header", frame_message(r, header)
    if c in (4, 5, 6):
        header = render(header_pairs(DATA, sender))
        return "safetensors", frame_message(r, header, safetensors_blob(r), lie=r.random() < 0.2)
    if c == 7:  # valid message with legal but extreme values
        mid = r.choice([10**400, 2**70, -1, 0, "", "x" * 4096, "\u202e", f"ok-{r.getrandbits(40)}"])
        rnd = r.choice([0, 2**70, 10**400, 2**63])
        kind = r.choice([DATA, "PING", "ACK", "NACK", "BYE", "PONG"])
        meta: dict = {}
        if kind == "ACK":
            meta = {"ack": mid}
        elif kind == "NACK":
            meta = {"nack": mid, "reason": "x", "detail": "y"}
        tensors = {"w": np.ones(r.choice([0, 1, 5]), np.float32)} if kind == DATA else {}
        try:
            return "valid_extreme", encode(Message(kind, FED, PLAN, sender, rnd, mid, meta, tensors))
        except ProtocolError:
            return "valid_extreme", encode(Message("PING", FED, PLAN, sender, 0, "p", {}))
    if c == 8:  # prefix only, or a short one
        hlen = r.choice([0, 8, 64, MAX_HEADER_BYTES, MAX_HEADER_BYTES + 1])
        plen = r.choice([0, 1, (8 << 20) - PREFIX_SIZE - hlen, (8 << 20) - PREFIX_SIZE - hlen + 1, 2**64 - 1])
        raw = PREFIX.pack(r.choice([MAGIC, MAGIC, b"FLT0"]), VERSION, 0, hlen, max(0, plen))
        return "prefix", raw[: r.choice([24, 24, r.randrange(1, 24)])]
    many = b"".join(encode(Message("PING", FED, PLAN, sender, 0, f"p{i}", {})) for i in range(r.choice([10, 200])))
    return "ping_batch", many


# ---------------------------------------------------------------------------------------------
# the arena: connections to one server, the pool of lingering ones, the TLS contexts


class Arena:
    def __init__(self, server: TransportServer, contexts: dict[str, ssl.SSLContext], zctx: zmq.Context) -> None:
        self.endpoint, self.ctxs, self.zctx = server.endpoint or "", contexts, zctx
        self.server = server
        self.alive = lambda: server._crash is None
        self.pool: list[FuzzPeer] = []
        self.live: list[FuzzPeer] = []
        self.recent_ids: deque[bytes] = deque(maxlen=64)
        self.label = ""
        self.opened = 0
        self.api_sends = 0

    def peer(self, r: random.Random | None, ctx: str | None = None, **kw: object) -> FuzzPeer:
        """A new connection; with ``r``, sometimes under an explicit or reused ZeroMQ identity."""
        rid = None
        x = r.random() if r is not None else 1.0
        if r is not None and x < 0.10:
            rid = bytes([r.randrange(1, 256)]) + r.randbytes(r.randrange(0, 255))
        elif x < 0.14 and self.recent_ids:
            rid = r.choice(list(self.recent_ids))  # type: ignore[union-attr]  # vanished, or still live
        p = FuzzPeer(self.zctx, self.endpoint, self.ctxs[ctx] if ctx else None, routing_id=rid, origin=self.label,
                     alive=self.alive, **kw)  # type: ignore[arg-type]
        if rid is not None:
            self.recent_ids.append(rid)
        self.live.append(p)
        self.opened += 1
        return p

    def finish(self, p: FuzzPeer, r: random.Random) -> None:
        """Vanish now, drain briefly then close, or linger in the pool."""
        x = r.random()
        if x < 0.45:
            p.close()
        elif x < 0.7:
            p.pump_in(r.choice([0.0, 0.01, 0.05]))
            p.close()
        else:
            self.pool.append(p)
            while len(self.pool) > POOL_CAP:
                self.pool.pop(0).close()

    def churn(self, r: random.Random) -> str | None:
        """A lingering peer sends one last thing and vanishes; returns its origin."""
        if not self.pool or r.random() < 0.5:
            return None
        p = self.pool.pop(r.randrange(len(self.pool)))
        try:
            if p.authenticated and p.obj is not None and r.random() < 0.6:
                p.send_plain(post_message(r, "site1")[1])
            elif r.random() < 0.5:
                p.send_frames(r.randbytes(r.randrange(0, 300)))
        except EXPECTED:
            pass
        p.close()
        return p.origin

    def close_all(self) -> None:
        for p in self.live:
            p.close()
        self.live.clear()
        self.pool.clear()

    def prune(self) -> None:
        self.live = [p for p in self.live if not p.closed]


# ---------------------------------------------------------------------------------------------
# scenarios: (label -> (weight, function)); each brings peers to a stage and misbehaves there

Scenario = Callable[[Arena, random.Random], None]
SCENARIOS: dict[str, tuple[int, Scenario]] = {}


def scenario(label: str, weight: int) -> Callable[[Scenario], Scenario]:
    def deco(fn: Scenario) -> Scenario:
        SCENARIOS[label] = (weight, fn)
        return fn

    return deco


def _good(r: random.Random) -> str:
    return r.choice(GOOD_NAMES)


def _tls_record(r: random.Random) -> bytes:
    ctype = r.choice([20, 21, 22, 23, 24, 0, 255])
    body = r.randbytes(r.choice([0, 1, 5, 100, 16384, 16385]))
    length = r.choice([len(body), len(body), 0, 2**14 + 256, 65535])
    version = r.choice([b"\x03\x01", b"\x03\x03", b"\x03\x04", b"\x00\x00"])
    return bytes([ctype]) + version + struct.pack(">H", length) + body


@scenario("pre.random_frames", 3)
def _pre_random(a: Arena, r: random.Random) -> None:
    p = a.peer(r)
    for _ in range(r.randint(1, 5)):
        p.send_frames(r.randbytes(r.choice([1, 5, 64, 1000, 4096, 16389])))
    a.finish(p, r)


@scenario("pre.empty_frames", 2)
def _pre_empty(a: Arena, r: random.Random) -> None:
    p = a.peer(r)
    for _ in range(r.randint(1, 6)):
        p.send_frames(b"")
    a.finish(p, r)


@scenario("pre.multipart", 2)
def _pre_multipart(a: Arena, r: random.Random) -> None:
    p = a.peer(r, r.choice([None, "site1"]))
    if p.obj is not None and r.random() < 0.5:
        p.send_frames(p.client_hello())  # a real start, then a multi-part message
    parts = [r.choice([b"", r.randbytes(r.randrange(1, 200))]) for _ in range(r.randint(2, 5))]
    p.send_frames(*parts)
    a.finish(p, r)


@scenario("pre.oversized", 2)
def _pre_oversized(a: Arena, r: random.Random) -> None:
    p = a.peer(r)
    size = max_frame_bytes() + r.choice([-65536, -1, 0, 1, 17, 1 << 20])
    head = r.choice([b"", b"\x16\x03\x01\xff\xff", b"\x17\x03\x03\x40\x00"])
    p.send_frames(head + bytes([r.randrange(256)]) * (size - len(head)))
    a.finish(p, r)


@scenario("pre.tls_records", 3)
def _pre_tls_records(a: Arena, r: random.Random) -> None:
    p = a.peer(r)
    records = [_tls_record(r) for _ in range(r.randint(1, 4))]
    if r.random() < 0.5:
        p.send_frames(b"".join(records))
    else:
        for rec in records:
            p.send_frames(rec)
    a.finish(p, r)


@scenario("pre.mutated_client_hello", 4)
def _pre_mutated_hello(a: Arena, r: random.Random) -> None:
    p = a.peer(r, _good(r))
    hello = bytearray(p.client_hello())
    op = r.randrange(4)
    if op == 0:
        hello = hello[: r.randrange(len(hello))]
    elif op == 1:
        for _ in range(r.randint(1, 10)):
            hello[r.randrange(len(hello))] = r.randrange(256)
    elif op == 2:  # the record or handshake length fields
        i = r.choice([3, 4, 6, 7, 8])
        hello[i] = r.choice([0, 0xFF, hello[i] ^ 1])
    else:
        hello += r.randbytes(r.randint(1, 100))
    p.send_frames(bytes(hello))
    a.finish(p, r)


@scenario("pre.swarm", 2)
def _pre_swarm(a: Arena, r: random.Random) -> None:
    peers = [a.peer(r, r.choice([None, _good(r)])) for _ in range(r.randint(5, 40))]
    for p in peers:
        p.send_frames(p.client_hello() if p.obj is not None else r.randbytes(r.randrange(1, 300)))
    r.shuffle(peers)
    for p in peers:
        if r.random() < 0.3:
            time.sleep(r.choice([0.0, 0.001, 0.005]))
        if r.random() < 0.2:
            a.finish(p, r)
        else:
            p.close()


@scenario("hs.hello_then_garbage", 4)
def _hs_then_garbage(a: Arena, r: random.Random) -> None:
    p = a.peer(r, r.choice([_good(r), "site9", "nocert"]))
    p.send_frames(p.client_hello())
    if r.random() < 0.6:
        p.pump_in(r.choice([0.0, 0.02, 0.2]))
    garbage = r.choice([r.randbytes(r.randrange(1, 2000)), _tls_record(r), b""])
    p.send_frames(garbage)
    a.finish(p, r)


@scenario("hs.partial_vanish", 4)
def _hs_partial_vanish(a: Arena, r: random.Random) -> None:
    p = a.peer(r, r.choice([_good(r), "site9", "expired", "revoked", "nocert"]))
    p.send_frames(p.client_hello())
    wait = r.choice([0.0, 0.0, 0.0005, 0.002, 0.01, "reply"])
    if wait == "reply":
        p.pump_in(0.2)
        if r.random() < 0.5:  # our second flight, cut short
            try:
                p.obj.do_handshake()  # type: ignore[union-attr]
            except ssl.SSLWantReadError:
                pass
            flight = p.out.read()
            if flight:
                p.send_frames(flight[: r.randrange(len(flight))])
    elif wait:
        time.sleep(wait)
    p.close()  # the server's next send to this identity finds nobody


@scenario("hs.mutated_client_flight", 3)
def _hs_mutated_flight(a: Arena, r: random.Random) -> None:
    p = a.peer(r, r.choice([_good(r), "site9"]))
    p.send_frames(p.client_hello())
    if not p.pump_in(0.3):
        a.finish(p, r)
        return
    try:
        p.obj.do_handshake()  # type: ignore[union-attr]
    except ssl.SSLWantReadError:
        pass
    flight = bytearray(p.out.read())
    if flight:
        op = r.randrange(3)
        if op == 0:
            for _ in range(r.randint(1, 6)):
                flight[r.randrange(len(flight))] ^= 1 << r.randrange(8)
        elif op == 1:
            flight = flight[: r.randrange(len(flight))] + r.randbytes(r.randrange(0, 64))
        else:
            flight += _tls_record(r)
        p.send_frames(bytes(flight))
    a.finish(p, r)


@scenario("hs.split_flights", 3)
def _hs_split(a: Arena, r: random.Random) -> None:
    """A legitimate handshake and HELLO with the byte stream cut into frames at random points."""
    name = r.choice([_good(r), _good(r), "site9"])
    p = a.peer(r, name)

    def send_split(data: bytes) -> None:
        cuts = sorted(r.sample(range(1, len(data)), min(len(data) - 1, r.randint(0, 5)))) if len(data) > 1 else []
        bounds = [0, *cuts, len(data)]
        for x, y in zip(bounds, bounds[1:]):
            p.send_frames(data[x:y])

    send_split(p.client_hello())
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        frame = p.recv_frame(0.2)
        if frame is None:
            continue
        p.inc.write(frame)
        try:
            p.obj.do_handshake()  # type: ignore[union-attr]
            break
        except ssl.SSLWantReadError:
            pass
    else:
        a.finish(p, r)
        return
    p.obj.write(encode(Message("HELLO", FED, PLAN, name, 0, "hs", {"name": name})))  # type: ignore[union-attr]
    send_split(p.out.read())
    first = p.read_message(r.choice([0.0, 0.3]))
    p.authenticated = first is not None and first.kind == "WELCOME"
    a.finish(p, r)


@scenario("auth.garbage_before_hello", 3)
def _auth_garbage(a: Arena, r: random.Random) -> None:
    p = a.peer(r, r.choice([_good(r), "site9"]))
    p.handshake(1.0)
    data = r.choice([r.randbytes(r.randrange(1, 3000)), post_message(r, "site1")[1],
                     PREFIX.pack(MAGIC, VERSION, 0, 64, PREAUTH_MAX_BYTES + r.choice([0, 1, 10**6]))])  # fmt: skip
    p.write_pieces(data, [r.randrange(1, len(data) + 1) for _ in range(r.randint(0, 3))], r.random() < 0.5)
    a.finish(p, r)


@scenario("auth.mutated_hello", 5)
def _auth_mutated_hello(a: Arena, r: random.Random) -> None:
    """Structure-aware HELLOs: every header field and meta mutated, before authentication."""
    cert = r.choice([_good(r), "site9"])
    p = a.peer(r, cert)
    p.handshake(1.0)
    claim = r.choice([cert, "site1", "site9", "aggregator", "", "x" * 5000])
    pairs = header_pairs("HELLO", claim, meta=json.dumps({"name": claim}), round_=0)
    header = render(mutate_pairs(r, pairs))
    if r.random() < 0.3:
        header = mutate_bytes(r, header)
    payload = safetensors_blob(r) if r.random() < 0.15 else b""
    data = frame_message(r, header, payload, limit=PREAUTH_MAX_BYTES)
    p.write_pieces(data, [r.randrange(1, len(data) + 1) for _ in range(r.randint(0, 2))], r.random() < 0.5)
    if r.random() < 0.5:
        p.close()  # vanish while the server answers (REJECT or WELCOME)
    else:
        a.finish(p, r)


@scenario("auth.not_in_roster", 2)
def _auth_site9(a: Arena, r: random.Random) -> None:
    """site9 is enrolled (valid certificate) but not in the roster; it then keeps talking."""
    p = a.peer(r, "site9")
    first = try_authenticate(p, "site9", claim=r.choice(["site9", "site1"]), timeout=1.0)
    assert first is None or first.kind == "REJECT", first  # never WELCOME
    for _ in range(r.randint(0, 3)):
        p.send_plain(post_message(r, "site9")[1])
    a.finish(p, r)


def _authed(a: Arena, r: random.Random) -> tuple[FuzzPeer, str] | None:
    name = _good(r)
    p = a.peer(r, name)
    first = try_authenticate(p, name)
    if first is None or first.kind != "WELCOME":
        a.finish(p, r)
        return None
    return p, name


@scenario("post.messages", 12)
def _post_messages(a: Arena, r: random.Random) -> None:
    """After WELCOME: a few hostile messages, each split / batched at random points."""
    got = _authed(a, r)
    if got is None:
        return
    p, name = got
    for _ in range(r.randint(1, 4)):
        _cls, data = post_message(r, r.choice([name, name, name, "site2" if name == "site1" else "site1"]))
        cuts = [r.randrange(1, len(data) + 1) for _ in range(r.choice([0, 0, 1, 3, 8]))] if data else []
        p.write_pieces(data, cuts, r.random() < 0.4)
        if r.random() < 0.3:
            p.pump_in(r.choice([0.0, 0.01, 0.05]))
    a.finish(p, r)


@scenario("post.truncated_vanish", 5)
def _post_truncated(a: Arena, r: random.Random) -> None:
    """After WELCOME: a message cut at a random point, then the peer vanishes (or desyncs)."""
    got = _authed(a, r)
    if got is None:
        return
    p, name = got
    if r.random() < 0.3:  # a large, legal announcement, left half-sent
        data = PREFIX.pack(MAGIC, VERSION, 0, 64, r.choice([1 << 20, (8 << 20) - 88])) + b" " * 64
        data += r.randbytes(r.choice([0, 1000, 300000]))
    else:
        data = post_message(r, name)[1]
        data = data[: r.randrange(len(data) + 1)] if data else data
    p.write_pieces(data, [r.randrange(1, len(data) + 1) for _ in range(r.randint(0, 3))] if data else [], False)
    if r.random() < 0.3:  # not a vanish: the next message lands in the middle of the cut one
        p.send_plain(encode(Message("PING", FED, PLAN, name, 0, "after-cut", {})))
        a.finish(p, r)
    else:
        p.close()


@scenario("post.flood_vanish", 3)
def _post_flood(a: Arena, r: random.Random) -> None:
    """After WELCOME: many PINGs (each answered) then vanish, or linger without reading."""
    got = _authed(a, r)
    if got is None:
        return
    p, name = got
    n = r.choice([5, 50, 500])
    p.send_plain(b"".join(encode(Message("PING", FED, PLAN, name, 0, f"f{i}", {})) for i in range(n)))
    if r.random() < 0.7:
        p.close()
    else:
        a.finish(p, r)


@scenario("post.raw_frames", 2)
def _post_raw(a: Arena, r: random.Random) -> None:
    """After WELCOME: frames that are not TLS, multi-part frames, empty frames, close_notify."""
    got = _authed(a, r)
    if got is None:
        return
    p, _name = got
    op = r.randrange(4)
    if op == 0:
        p.send_frames(r.choice([r.randbytes(r.randrange(1, 500)), _tls_record(r)]))
    elif op == 1:
        p.send_frames(*[r.randbytes(r.randrange(0, 50)) for _ in range(r.randint(2, 4))])
    elif op == 2:
        p.send_frames(b"")
    else:
        try:
            p.obj.unwrap()  # type: ignore[union-attr]
        except ssl.SSLWantReadError:
            pass
        p.flush()
    a.finish(p, r)


@scenario("api.commands", 1)
def _api_commands(a: Arena, r: random.Random) -> None:
    """The application acts meanwhile: expire every session, swap the TLS context, queue a message."""
    op = r.randrange(3)
    if op == 0:
        a.server.expire_sessions()
    elif op == 1:
        a.server.set_ssl_context(a.ctxs["server"], expire=r.random() < 0.5)
    elif a.api_sends < 8:  # the fuzz peers never acknowledge: each new session gets them all again
        a.api_sends += 1
        a.server.send(r.choice(GOOD_NAMES), a.server.message(DATA, round=1, tensors={"w": np.ones(3, np.float32)}))


# ---------------------------------------------------------------------------------------------
# the campaign


@dataclass
class Finding:
    signature: str
    exception: str
    traceback: str
    first_step: int
    count: int = 1
    recent: list[str] = field(default_factory=list)
    culprit: str | None = None  # "label:seed" of a step that reproduced it alone on a fresh server
    after: Counter = field(default_factory=Counter)  # scenario of the step just before each occurrence

    def describe(self) -> str:
        who = f"reproduced alone: FLTAC_FUZZ_REPLAY={self.culprit}" if self.culprit else "not reproduced alone"
        after = ", ".join(f"{k}={v}" for k, v in self.after.most_common())
        return (f"* {self.signature}\n    seen {self.count}x, first at step {self.first_step}; {who}\n"
                f"    seen right after: {after}\n"
                f"    exception: {self.exception[:300]}\n    recent steps: {', '.join(self.recent[-6:])}\n"
                + "".join(f"    | {line}\n" for line in self.traceback.rstrip().splitlines()))  # fmt: skip


@dataclass
class FuzzReport:
    seed: int
    seconds: float
    steps: int = 0
    restarts: int = 0
    connections: int = 0
    elapsed: float = 0.0
    scenario_counts: Counter = field(default_factory=Counter)
    peer_errors: Counter = field(default_factory=Counter)
    anomalies: list[str] = field(default_factory=list)
    findings: dict[str, Finding] = field(default_factory=dict)
    rss_mib: list[int] = field(default_factory=list)  # resident memory, sampled every few seconds

    def summary(self) -> str:
        lines = [f"fuzz seed={self.seed} budget={self.seconds:g}s elapsed={self.elapsed:.1f}s steps={self.steps} "
                 f"connections={self.connections} server restarts after a crash={self.restarts}",
                 "scenarios: " + ", ".join(f"{k}={v}" for k, v in sorted(self.scenario_counts.items())),
                 "peer-side errors (expected refusals): "
                 + ", ".join(f"{k}={v}" for k, v in sorted(self.peer_errors.items())),
                 "RSS MiB over time: " + " ".join(map(str, self.rss_mib))]  # fmt: skip
        if self.anomalies:
            lines.append("anomalies (server output our strict decoder refused):")
            lines += [f"  {x}" for x in self.anomalies[:20]]
        if self.findings:
            lines.append(f"{len(self.findings)} distinct server I/O thread crash(es):")
            lines += [f.describe() for f in self.findings.values()]
        else:
            lines.append("no server crash")
        return "\n".join(lines)


def crash_signature(exc: BaseException) -> tuple[str, str]:
    """(signature, formatted traceback): type, message with numbers blanked, innermost project frame."""
    tb = traceback.extract_tb(exc.__traceback__)
    where = "?"
    for fr in reversed(tb):
        if "fltac_secure" in fr.filename:
            where = f"{fr.filename.split('fltac_secure/')[-1]}:{fr.lineno} in {fr.name}"
            break
    msg = re.sub(r"\d+", "N", str(exc))[:120]
    frames = [f"{fr.filename.split('fltac_secure/')[-1]}:{fr.lineno} in {fr.name}: {fr.line}"
              for fr in tb if "fltac_secure" in fr.filename]  # fmt: skip
    text = "\n".join([*frames[-5:], f"{type(exc).__name__}: {str(exc)[:300]}"])
    return f"{type(exc).__name__}: {msg} @ {where}", text


def _forget_frames(exc: BaseException | None) -> None:
    """Drop the tracebacks of ``exc`` and its chain: their frames reference the whole server."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc.__traceback__ = None
        exc = exc.__cause__ or exc.__context__


class _CountingLedger(Ledger):
    """The real ledger's record() (what production servers run on the I/O thread), no disk writes."""

    def __init__(self) -> None:  # no file: Ledger.__init__ would create a directory
        self.site, self.lines = "aggregator", 0

    def _append(self, row: dict) -> None:
        json.dumps(row, sort_keys=True, separators=(",", ":"))
        self.lines += 1


def _contexts(pki) -> dict[str, ssl.SSLContext]:
    ctxs = {name: cctx(pki, name) for name in (*GOOD_NAMES, "site9", "site4")}
    ctxs["revoked"] = ctxs.pop("site4")
    p3 = pki.paths("site3")
    expired = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    expired.load_verify_locations(p3.ca)
    expired.load_cert_chain(p3.cert, p3.key)
    nocert = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    nocert.load_verify_locations(pki.ca_cert)
    ctxs.update(expired=expired, nocert=nocert, server=sctx(pki))
    return ctxs


def fuzz_server(pki, **kw: object) -> TransportServer:
    opts = dict(SERVER_OPTS, ledger_hook=_CountingLedger())
    opts.update(kw)
    return start_server(pki, **opts)


def _run_step(a: Arena, label: str, seed: int, report: FuzzReport | None) -> None:
    a.label = f"{label}:{seed}"
    try:
        SCENARIOS[label][1](a, random.Random(seed))
    except EXPECTED as exc:
        if report is not None:
            report.peer_errors[type(exc).__name__] += 1
    except ProtocolError as exc:  # RawPeer.read_message strictly decodes what the server sent
        if report is not None and len(report.anomalies) < 50:
            report.anomalies.append(f"{label}:{seed}: {exc} [{exc.reason}]")


class Campaign:
    """Drive one server (a fresh one after each crash) with seeded scenarios for ``seconds``."""

    def __init__(self, pki, *, seed: int, seconds: float, triage_share: float = 0.35) -> None:
        self.pki, self.seed, self.seconds = pki, seed, seconds
        self.triage_share = triage_share
        self.ctxs = _contexts(pki)
        self.zctx = zmq.Context()
        self.report = FuzzReport(seed, seconds)
        self.server = fuzz_server(pki)
        self.arena = Arena(self.server, self.ctxs, self.zctx)

    def close(self) -> None:
        self.arena.close_all()
        self.zctx.term()
        self.server.close()

    def run(self) -> FuzzReport:
        master = random.Random(self.seed)
        labels = list(SCENARIOS)
        weights = [SCENARIOS[k][0] for k in labels]
        history: deque[tuple[str, int]] = deque(maxlen=8)
        start = time.monotonic()
        self._deadline = start + self.seconds
        self._triage_left = self.seconds * self.triage_share
        next_sample = start
        while (now := time.monotonic()) < self._deadline:
            if now >= next_sample:
                self.report.rss_mib.append(rss_bytes() >> 20)
                next_sample = now + max(1.0, self.seconds / 24)
            label = master.choices(labels, weights)[0]
            seed = master.getrandbits(48)
            history.append((label, seed))
            self.report.steps += 1
            self.report.scenario_counts[label] += 1
            _run_step(self.arena, label, seed, self.report)
            origin = self.arena.churn(master)
            if origin is not None:
                history.append(("churn:" + origin, -1))
            self.arena.prune()
            if self._crashed():
                self._on_crash(list(history))
                history.clear()
        self.arena.close_all()  # everyone vanishes at once
        time.sleep(0.3)
        if self._crashed():
            self._on_crash(list(history))
        self.report.connections += self.arena.opened
        self.report.elapsed = time.monotonic() - start
        return self.report

    def _crashed(self) -> bool:
        t = self.server._thread
        return self.server._crash is not None or t is None or not t.is_alive()

    def _on_crash(self, history: list[tuple[str, int]]) -> None:
        exc = self.server._crash or RuntimeError("I/O thread ended without a recorded exception")
        sig, text = crash_signature(exc)
        _forget_frames(exc)  # log records (pytest keeps them) hold the exception: let the dead server go
        recent = [f"{lab}:{s}" if s >= 0 else lab for lab, s in history]
        self.arena.close_all()
        self.report.connections += self.arena.opened
        self.server.close()
        last = "?"
        if history:  # a churn entry is "churn:<label>:<seed>"
            last = history[-1][0].rsplit(":", 1)[0] if history[-1][1] < 0 else history[-1][0]
        if sig in self.report.findings:
            self.report.findings[sig].count += 1
        else:
            f = Finding(sig, f"{type(exc).__name__}: {exc}", text, self.report.steps, recent=recent)
            f.culprit = self._triage(sig, history)
            self.report.findings[sig] = f
        self.report.findings[sig].after[last] += 1
        self.report.restarts += 1
        self.server = fuzz_server(self.pki)
        self.arena = Arena(self.server, self.ctxs, self.zctx)

    def _triage(self, sig: str, history: list[tuple[str, int]]) -> str | None:
        tried = set()
        for label, seed in reversed(history):
            if seed < 0 or (label, seed) in tried or len(tried) >= 4 or self._triage_left <= 0:
                continue
            tried.add((label, seed))
            t0 = time.monotonic()
            for _attempt in range(2):  # timing-dependent crashes get a second chance
                if replay_once(self.pki, label, seed, self.ctxs, self.zctx) == sig:
                    self._triage_left -= time.monotonic() - t0
                    return f"{label}:{seed}"
            self._triage_left -= time.monotonic() - t0
        return None


def replay_once(pki, label: str, seed: int, ctxs: dict | None = None, zctx: zmq.Context | None = None) -> str | None:
    """Run one step alone on a fresh server, all its peers vanish, and return the crash signature (or None)."""
    own = zctx is None
    zctx = zctx or zmq.Context()
    srv = fuzz_server(pki)
    arena = Arena(srv, ctxs or _contexts(pki), zctx)
    try:
        _run_step(arena, label, seed, None)
        arena.close_all()
        end = time.monotonic() + 0.4
        while srv._crash is None and time.monotonic() < end:
            time.sleep(0.02)
        sig = crash_signature(srv._crash)[0] if srv._crash is not None else None
        _forget_frames(srv._crash)
        return sig
    finally:
        arena.close_all()
        srv.close()
        if own:
            zctx.term()


# ---------------------------------------------------------------------------------------------
# the corpus: minimal inputs that each crashed the server's I/O thread once (regression seeds)


def wire(header: bytes, payload: bytes = b"") -> bytes:
    """An honest frame: prefix with the true lengths, header padded so the payload is aligned."""
    header += b" " * (-(PREFIX_SIZE + len(header)) % 8)
    return PREFIX.pack(MAGIC, VERSION, 0, len(header), len(payload)) + header + payload


def st_blob(entries: dict[str, str], data: bytes = b"") -> bytes:
    """A safetensors blob from raw JSON text per entry."""
    header = ("{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in entries.items()) + "}").encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + data


def _hello(name: str, **raw: str) -> bytes:
    pairs = [(k, raw.get(k, v)) for k, v in header_pairs("HELLO", name, round_=0, meta=json.dumps({"name": name}))]
    return render(pairs)


def _session(a: Arena, name: str = "site1") -> FuzzPeer:
    p = a.peer(None, name)
    first = try_authenticate(p, name)
    assert first is not None and first.kind == "WELCOME", f"{name} was not welcomed: {first}"
    return p


def _handshaken(a: Arena, name: str) -> FuzzPeer:
    p = a.peer(None, name)
    p.handshake(2.0)
    return p


def _c_vanish_after_client_hello(a: Arena) -> None:
    """No certificate needed: connect, send a ClientHello, close at once; the server answers nobody."""
    for _ in range(30):
        p = a.peer(None, "nocert")
        p.send_frames(p.client_hello())
        p.close()
        time.sleep(0.01)
        if not a.alive():
            return


def _c_hello_huge_int(a: Arena) -> None:
    """site9 (enrolled, not in the roster) sends a HELLO whose round has 4400 digits."""
    _handshaken(a, "site9").send_plain(wire(_hello("site9", round="9" * 4400)))


def _c_hello_shape_not_a_list(a: Arena) -> None:
    """site9 sends a HELLO carrying a safetensors entry whose shape is the integer 5."""
    blob = st_blob({"w": '{"dtype":"F32","shape":5,"data_offsets":[0,0]}'})
    _handshaken(a, "site9").send_plain(wire(_hello("site9"), blob))


def _c_zero_dim_huge_shape(a: Arena) -> None:
    """Authenticated: a tensor of shape [0, 10**30] (zero elements, zero bytes)."""
    blob = st_blob({"w": '{"dtype":"F32","shape":[0,%d],"data_offsets":[0,0]}' % 10**30})
    _session(a).send_plain(wire(render(header_pairs(DATA, "site1")), blob))


def _c_offsets_null(a: Arena) -> None:
    """Authenticated: a tensor whose data_offsets is null."""
    blob = st_blob({"w": '{"dtype":"F32","shape":[1],"data_offsets":null}'}, b"\0" * 4)
    _session(a).send_plain(wire(render(header_pairs(DATA, "site1")), blob))


def _c_ack_of_a_list(a: Arena) -> None:
    """Authenticated: ACK whose meta.ack is a list (valid meta, unhashable key)."""
    _session(a).send_plain(encode(Message("ACK", FED, PLAN, "site1", 0, "a1", {"ack": [1]})))


def _c_nack_of_a_list(a: Arena) -> None:
    """Authenticated: NACK whose meta.nack is a list."""
    msg = Message("NACK", FED, PLAN, "site1", 0, "n1", {"nack": [1], "reason": "x", "detail": "y"})
    _session(a).send_plain(encode(msg))


def _c_ping_then_bad_record(a: Arena) -> None:
    """Authenticated: a PING, then (next frame) a forged TLS record: the PONG is encrypted on a dead session."""
    p = _session(a)
    p.send_plain(encode(Message("PING", FED, PLAN, "site1", 0, "p1", {})))
    p.send_frames(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)


CORPUS: dict[str, Callable[[Arena], None]] = {
    "vanish_after_client_hello": _c_vanish_after_client_hello,
    "unrostered_hello_huge_int": _c_hello_huge_int,
    "unrostered_hello_shape_not_a_list": _c_hello_shape_not_a_list,
    "zero_dim_huge_shape": _c_zero_dim_huge_shape,
    "offsets_null": _c_offsets_null,
    "ack_of_a_list": _c_ack_of_a_list,
    "nack_of_a_list": _c_nack_of_a_list,
    "ping_then_forged_record": _c_ping_then_bad_record,
}


def run_corpus_case(pki, name: str, zctx: zmq.Context, server: TransportServer) -> str | None:
    """Feed one corpus input to ``server``; the crash signature if its I/O thread died, else None."""
    arena = Arena(server, _contexts(pki), zctx)
    try:
        try:
            CORPUS[name](arena)
        except EXPECTED:
            pass
        end = time.monotonic() + 0.3
        while server._crash is None and time.monotonic() < end:
            time.sleep(0.02)
    finally:
        arena.close_all()
    return crash_signature(server._crash)[0] if server._crash is not None else None


# ---------------------------------------------------------------------------------------------
# a peer that sends and never reads


def flood_without_reading(pki, pings: int, limit_bytes: int, timeout: float = 240.0) -> tuple[int, str]:
    """An authenticated peer sends ``pings`` PINGs, then one data message, and never reads a reply.

    The server either gets through the flood or ends the session of the peer that does not read
    (its send queue is bounded); both are fine, growing without bound is not.
    Returns (RSS growth in bytes once the server has handled everything, outcome).  The peer's
    own send queue is kept to a few frames (it blocks instead), so the growth is the server's.
    """
    zctx = zmq.Context()
    srv = fuzz_server(pki, idle_timeout=timeout)
    p = FuzzPeer(zctx, srv.endpoint or "", cctx(pki, "site1"), alive=lambda: srv._crash is None,
                 sndhwm=4, sndtimeo_ms=int(timeout * 1000))  # fmt: skip
    try:
        assert (try_authenticate(p, "site1", timeout=5.0) or Message("BYE", FED, PLAN, "")).kind == "WELCOME"
        ping = encode(Message("PING", FED, PLAN, "site1", 0, "p", {}))
        per = (1 << 20) // len(ping)
        gc.collect()
        before = rss_bytes()
        peak, outcome = 0, "ok"
        for sent in range(0, pings, per):
            p.send_plain(ping * min(per, pings - sent))
            peak = max(peak, rss_bytes() - before)
            if peak > limit_bytes or srv._crash is not None:
                outcome = "limit exceeded while sending" if peak > limit_bytes else f"crash: {srv._crash!r}"
                break
        else:
            p.send_plain(encode(Message(DATA, FED, PLAN, "site1", 1, "flood-end", {}, {"w": np.ones(1, np.float32)})))
            end = time.monotonic() + timeout
            while outcome == "ok":
                if srv._crash is not None:
                    outcome = f"crash: {srv._crash!r}"
                    break
                got = srv.recv(timeout=0.5)
                peak = max(peak, rss_bytes() - before)
                if got is not None and got[1].msg_id == "flood-end":
                    break
                if "site1" not in srv.peers():  # the server ended the session of a peer that does not read
                    break
                if peak > limit_bytes:
                    outcome = "limit exceeded while the server worked through the flood"
                elif time.monotonic() > end:
                    outcome = "the server did not get through the flood in time"
        return peak, outcome
    finally:
        p.close()
        zctx.term()
        srv.close()
