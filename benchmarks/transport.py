"""Benchmark: throughput and handshake latency of the fltac transport against plain
ZeroMQ (no security) and a plain ssl-wrapped TCP socket (mutual TLS 1.3, same keys).

Each measurement is one message from a client to a server in this process (two
threads) until the server's acknowledgement is back; medians over ``--repeats``.
Writes benchmarks/results/transport.json and transport.md.

    .venv/bin/python benchmarks/transport.py            # 1, 16, 64, 256 MB, 5 repeats
    .venv/bin/python benchmarks/transport.py --quick    # 1 and 16 MB, 3 repeats
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import ssl
import statistics
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import zmq

from fltac_secure.pki import client_context, server_context
from fltac_secure.pki.testing import enroll_federation
from fltac_secure.transport import KindSpec, TransportClient, TransportServer, register_kind, tensors_like

MB = 1 << 20
FED, PLAN, KIND = "bench", "b" * 64, "BENCH_BLOB"
RESULTS = Path(__file__).parent / "results"


def _median_time(fn: Callable[[], None], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# -- this transport ------------------------------------------------------------------------


def bench_fltac(pki, sizes: list[int], repeats: int) -> tuple[dict[int, float], float]:
    a, c = pki.paths("aggregator"), pki.paths("site1")
    srv = TransportServer("tcp://127.0.0.1:*", server_context(a.cert, a.key, a.ca, a.crl), ["site1"], FED, PLAN,
                          max_message_bytes=max(sizes) + MB).start()  # fmt: skip
    cctx = client_context(c.cert, c.key, c.ca)
    try:

        def handshake() -> None:
            TransportClient(srv.endpoint, cctx, "site1", FED, PLAN).connect().close()

        hs = _median_time(handshake, repeats * 4)
        out = {}
        with TransportClient(srv.endpoint, cctx, "site1", FED, PLAN, stall_timeout=120) as client:
            client.connect()
            for size in sizes:
                msg = client.message(KIND, tensors={"x": np.ones(size // 4, np.float32)})

                def one() -> None:
                    client.send(msg, timeout=300)
                    assert srv.recv(timeout=300) is not None

                out[size] = _median_time(one, repeats)
        return out, hs
    finally:
        srv.close()


# -- plain ZeroMQ ---------------------------------------------------------------------------


def bench_zmq(sizes: list[int], repeats: int) -> tuple[dict[int, float], float]:
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind("tcp://127.0.0.1:*")
    endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            if router.poll(50):
                ident, data = router.recv_multipart(copy=False)
                router.send_multipart([ident, b"ack"])

    th = threading.Thread(target=serve, daemon=True)
    th.start()

    def roundtrip(dealer: zmq.Socket, payload: bytes | np.ndarray) -> None:
        dealer.send(payload, copy=False)
        dealer.recv()

    def handshake() -> None:
        d = ctx.socket(zmq.DEALER)
        d.connect(endpoint)
        roundtrip(d, b"x")
        d.close(0)

    hs = _median_time(handshake, repeats * 4)
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(endpoint)
    out = {s: _median_time(lambda s=s: roundtrip(dealer, np.ones(s // 4, np.float32)), repeats) for s in sizes}
    stop.set()
    th.join()
    dealer.close(0)
    router.close(0)
    ctx.term()
    return out, hs


# -- plain ssl socket ----------------------------------------------------------------------


def _recv_exact(sock: ssl.SSLSocket, view: memoryview) -> None:
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if n == 0:
            raise ConnectionError("peer closed")
        got += n


def bench_ssl(pki, sizes: list[int], repeats: int) -> tuple[dict[int, float], float]:
    a, c = pki.paths("aggregator"), pki.paths("site1")
    sctx = server_context(a.cert, a.key, a.ca, a.crl)
    cctx = client_context(c.cert, c.key, c.ca)
    listener = socket.create_server(("127.0.0.1", 0))
    nodelay = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    port = listener.getsockname()[1]

    def serve_one(raw: socket.socket) -> None:
        raw.setsockopt(*nodelay)
        with sctx.wrap_socket(raw, server_side=True) as conn:
            head = bytearray(8)
            while True:
                try:
                    _recv_exact(conn, memoryview(head))
                except (ConnectionError, ssl.SSLError, OSError):
                    return
                buf = bytearray(struct.unpack("<Q", head)[0])  # preallocated from the announced size
                _recv_exact(conn, memoryview(buf))
                conn.sendall(b"k")

    def accept_loop() -> None:
        while True:
            try:
                raw, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve_one, args=(raw,), daemon=True).start()

    threading.Thread(target=accept_loop, daemon=True).start()

    def roundtrip(conn: ssl.SSLSocket, payload: memoryview) -> None:
        conn.sendall(struct.pack("<Q", len(payload)))
        conn.sendall(payload)
        _recv_exact(conn, memoryview(bytearray(1)))

    def connect() -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", port))
        raw.setsockopt(*nodelay)
        return cctx.wrap_socket(raw, server_hostname="localhost")

    def handshake() -> None:
        with connect() as conn:
            roundtrip(conn, memoryview(b"x"))  # the server has verified us once it answers

    hs = _median_time(handshake, repeats * 4)
    out = {}
    with connect() as conn:
        for size in sizes:
            payload = memoryview(np.ones(size // 4, np.float32)).cast("B")
            out[size] = _median_time(lambda p=payload: roundtrip(conn, p), repeats)
    listener.close()
    return out, hs


# -- report ----------------------------------------------------------------------------------


def report(sizes: list[int], repeats: int, times: dict[str, dict[int, float]], hs: dict[str, float]) -> dict:
    rows = []
    for s in sizes:
        mbps = {k: s / MB / times[k][s] for k in times}
        rows.append({"size_mb": s // MB, **{f"{k}_mb_s": round(v, 1) for k, v in mbps.items()},
                     "fltac_vs_ssl": round(mbps["fltac"] / mbps["ssl"], 3),
                     "fltac_vs_zmq": round(mbps["fltac"] / mbps["zmq"], 3)})  # fmt: skip
    return {
        "what": "one message client->server until acknowledged, loopback, medians",
        "repeats": repeats,
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version(),
                    "openssl": ssl.OPENSSL_VERSION, "zmq": zmq.zmq_version(),
                    "note": "shared 2-core machine, other jobs running; compare ratios, not absolutes"},  # fmt: skip
        "throughput": rows,
        "handshake_ms": {k: round(v * 1000, 2) for k, v in hs.items()},
        "target": "fltac >= 0.8x plain ssl at >= 16 MB",
        "target_met": all(r["fltac_vs_ssl"] >= 0.8 for r in rows if r["size_mb"] >= 16),
    }


def markdown(res: dict) -> str:
    lines = [
        "# Transport benchmark",
        "",
        f"{res['what']}; {res['repeats']} repeats. Machine: {res['machine']['cpus']} CPUs, "
        f"{res['machine']['openssl']}, libzmq {res['machine']['zmq']}. **{res['machine']['note']}.**",
        "",
        "Command: `.venv/bin/python benchmarks/transport.py`",
        "",
        "| size (MB) | fltac (MB/s) | plain ssl (MB/s) | plain zmq (MB/s) | fltac / ssl | fltac / zmq |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["throughput"]:
        lines.append(f"| {r['size_mb']} | {r['fltac_mb_s']} | {r['ssl_mb_s']} | {r['zmq_mb_s']} | "
                     f"{r['fltac_vs_ssl']} | {r['fltac_vs_zmq']} |")  # fmt: skip
    h = res["handshake_ms"]
    lines += [
        "",
        "Handshake to first acknowledged exchange (ms, median): "
        f"fltac {h['fltac']} (TLS 1.3 mutual + HELLO/WELCOME), plain ssl {h['ssl']} (mutual TLS 1.3 + 1 byte), "
        f"plain zmq {h['zmq']} (connect + 1 round trip).",
        "",
        f"Target ({res['target']}): {'met' if res['target_met'] else 'NOT met'}.",
        "",
    ]
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    """Throughput against message size for the three transports (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = res["throughput"]
    sizes = [r["size_mb"] for r in rows]
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for key, label in (("fltac", "fltac (TLS 1.3 over ZeroMQ)"), ("ssl", "plain ssl socket"), ("zmq", "plain ZeroMQ")):
        ax.plot(sizes, [r[f"{key}_mb_s"] for r in rows], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(sizes, [str(x) for x in sizes])
    ax.minorticks_off()
    ax.set_xlabel("message size (MB)")
    ax.set_ylabel("throughput (MB/s, median)")
    ax.set_title("Loopback throughput, one message until acknowledged", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,16,64,256", help="message sizes in MB, comma-separated")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats per size (median)")
    ap.add_argument("--quick", action="store_true", help="1 and 16 MB, 3 repeats")
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for transport.json / transport.md")
    ap.add_argument("--plot-only", action="store_true", help="redraw transport.png from the saved transport.json")
    args = ap.parse_args()
    if args.plot_only:
        plot(json.loads((args.out / "transport.json").read_text()), args.out / "transport.png")
        return
    sizes_mb = [1, 16] if args.quick else [int(x) for x in args.sizes.split(",")]
    repeats = 3 if args.quick else args.repeats
    sizes = [s * MB for s in sizes_mb]
    register_kind(KindSpec(KIND, tensors_like({"x": (["float32"], 1)}), max_tensors=1))
    with tempfile.TemporaryDirectory() as tmp:
        pki = enroll_federation(Path(tmp), ["site1"])
        times, hs = {}, {}
        times["fltac"], hs["fltac"] = bench_fltac(pki, sizes, repeats)
        times["ssl"], hs["ssl"] = bench_ssl(pki, sizes, repeats)
        times["zmq"], hs["zmq"] = bench_zmq(sizes, repeats)
    res = report(sizes, repeats, times, hs)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "transport.json").write_text(json.dumps(res, indent=2) + "\n")
    (args.out / "transport.md").write_text(markdown(res))
    plot(res, args.out / "transport.png")
    print(markdown(res))


if __name__ == "__main__":
    main()
