"""Benchmark: throughput and handshake latency of the fltac transport against plain
ZeroMQ (no security) and a plain ssl-wrapped TCP socket (mutual TLS 1.3, same keys).

Each measurement is one message from a client to a server in this process (two
threads) until the server's acknowledgement is back; medians over ``--repeats``.
The three transports are timed interleaved (fltac, ssl, zmq, then the reverse
order, ...) so that a change in the machine's load hits all of them alike, and
the load is measured and recorded (load average before and after, and the CPU
that other processes used while the timed runs ran): the 2-CPU machine is
shared, and a loaded run says little about the ratios on an idle one.
Writes benchmarks/results/transport.json and transport.md.

    .venv/bin/python benchmarks/transport.py            # 1, 4, 16, 32, 64, 256 MB, 9 repeats
    .venv/bin/python benchmarks/transport.py --quick    # 1 and 16 MB, 3 repeats
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import ssl
import statistics
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import zmq

from fltac_secure.pki import client_context, server_context
from fltac_secure.pki.testing import enroll_federation
from fltac_secure.transport import KindSpec, TransportClient, TransportServer, register_kind, tensors_like

MB = 1 << 20
FED, PLAN, KIND = "bench", "b" * 64, "BENCH_BLOB"
RESULTS = Path(__file__).parent / "results"


IDLE_OTHERS_CPUS = 0.1  # other processes using less than this many CPUs on average: an idle machine


class LoadProbe:
    """CPU that other processes use while timed sections run (Linux ``/proc/stat``).

    ``others`` = (busy CPU time of the whole machine) - (CPU time of this
    process, all threads), per second of wall time: 0 on an idle machine, up
    to ``cpus`` when every CPU is busy with something else.  ``/proc/stat``
    counts in 10 ms ticks, so single sections are coarse; the sums over many
    are what is reported.
    """

    def __init__(self) -> None:
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.acc: dict[str, list[float]] = {}  # name -> [wall, machine busy, own cpu]
        self.available = self._busy() is not None

    @staticmethod
    def _busy() -> float | None:
        try:
            with open("/proc/stat") as fh:
                fields = [int(x) for x in fh.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return float(sum(fields[:8]) - idle)  # user nice system idle iowait irq softirq steal

    @staticmethod
    def _own() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    @contextmanager
    def section(self, name: str) -> Iterator[None]:
        b0, c0, t0 = self._busy(), self._own(), time.perf_counter()
        try:
            yield
        finally:
            t1, c1, b1 = time.perf_counter(), self._own(), self._busy()
            acc = self.acc.setdefault(name, [0.0, 0.0, 0.0])
            acc[0] += t1 - t0
            acc[1] += ((b1 - b0) / self.tick) if b0 is not None and b1 is not None else 0.0
            acc[2] += c1 - c0

    def others(self, keep: Callable[[str], bool] = lambda name: True) -> float | None:
        """Average number of CPUs other processes kept busy during the sections whose name ``keep`` accepts."""
        if not self.available:
            return None
        rows = [v for k, v in self.acc.items() if keep(k)]
        wall = sum(r[0] for r in rows)
        return max(0.0, (sum(r[1] for r in rows) - sum(r[2] for r in rows)) / wall) if wall else None


class Bench:
    """One transport: ``handshake()`` and ``one(size)`` (a callable sending ``size`` bytes until acknowledged)."""

    def handshake(self) -> None:
        raise NotImplementedError

    def one(self, size: int) -> Callable[[], None]:
        raise NotImplementedError

    def close(self) -> None:
        pass


# -- this transport ------------------------------------------------------------------------


class FltacBench(Bench):
    def __init__(self, pki, max_size: int) -> None:
        a, c, h = pki.paths("aggregator"), pki.paths("site1"), pki.paths("site2")
        self.srv = TransportServer("tcp://127.0.0.1:*", server_context(a.cert, a.key, a.ca, a.crl), ["site1", "site2"],
                                   FED, PLAN, max_message_bytes=max_size + MB).start()  # fmt: skip
        self.cctx = client_context(c.cert, c.key, c.ca)
        self.client = TransportClient(self.srv.endpoint, self.cctx, "site1", FED, PLAN, stall_timeout=120).connect()
        self.hctx = client_context(h.cert, h.key, h.ca)  # handshakes: another site (one live session per site)

    def handshake(self) -> None:
        TransportClient(self.srv.endpoint, self.hctx, "site2", FED, PLAN).connect().close()

    def one(self, size: int) -> Callable[[], None]:
        msg = self.client.message(KIND, tensors={"x": np.ones(size // 4, np.float32)})

        def run() -> None:
            self.client.send(msg, timeout=300)
            assert self.srv.recv(timeout=300) is not None

        return run

    def close(self) -> None:
        self.client.close()
        self.srv.close()


# -- plain ZeroMQ ---------------------------------------------------------------------------


class ZmqBench(Bench):
    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.bind("tcp://127.0.0.1:*")
        self.endpoint = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        self.dealer = self.ctx.socket(zmq.DEALER)
        self.dealer.connect(self.endpoint)

    def _serve(self) -> None:
        while not self.stop.is_set():
            if self.router.poll(50):
                ident, _data = self.router.recv_multipart(copy=False)
                self.router.send_multipart([ident, b"ack"])

    @staticmethod
    def _roundtrip(dealer: zmq.Socket, payload: bytes | np.ndarray) -> None:
        dealer.send(payload, copy=False)
        dealer.recv()

    def handshake(self) -> None:
        d = self.ctx.socket(zmq.DEALER)
        d.connect(self.endpoint)
        self._roundtrip(d, b"x")
        d.close(0)

    def one(self, size: int) -> Callable[[], None]:
        payload = np.ones(size // 4, np.float32)
        return lambda: self._roundtrip(self.dealer, payload)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.dealer.close(0)
        self.router.close(0)
        self.ctx.term()


# -- plain ssl socket ----------------------------------------------------------------------


def _recv_exact(sock: ssl.SSLSocket, view: memoryview) -> None:
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if n == 0:
            raise ConnectionError("peer closed")
        got += n


class SslBench(Bench):
    def __init__(self, pki) -> None:
        a, c = pki.paths("aggregator"), pki.paths("site1")
        self.sctx = server_context(a.cert, a.key, a.ca, a.crl)
        self.cctx = client_context(c.cert, c.key, c.ca)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept_loop, daemon=True).start()
        self.conn = self._connect()

    _NODELAY = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _serve_one(self, raw: socket.socket) -> None:
        raw.setsockopt(*self._NODELAY)
        with self.sctx.wrap_socket(raw, server_side=True) as conn:
            head = bytearray(8)
            while True:
                try:
                    _recv_exact(conn, memoryview(head))
                except (ConnectionError, ssl.SSLError, OSError):
                    return
                buf = bytearray(struct.unpack("<Q", head)[0])  # preallocated from the announced size
                _recv_exact(conn, memoryview(buf))
                conn.sendall(b"k")

    def _accept_loop(self) -> None:
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve_one, args=(raw,), daemon=True).start()

    def _connect(self) -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", self.port))
        raw.setsockopt(*self._NODELAY)
        return self.cctx.wrap_socket(raw, server_hostname="localhost")

    @staticmethod
    def _roundtrip(conn: ssl.SSLSocket, payload: memoryview) -> None:
        conn.sendall(struct.pack("<Q", len(payload)))
        conn.sendall(payload)
        _recv_exact(conn, memoryview(bytearray(1)))

    def handshake(self) -> None:
        with self._connect() as conn:
            self._roundtrip(conn, memoryview(b"x"))  # the server has verified us once it answers

    def one(self, size: int) -> Callable[[], None]:
        payload = memoryview(np.ones(size // 4, np.float32)).cast("B")
        return lambda: self._roundtrip(self.conn, payload)

    def close(self) -> None:
        self.conn.close()
        self.listener.close()


def measure(benches: dict[str, Bench], sizes: list[int], repeats: int, probe: LoadProbe
            ) -> tuple[dict[str, dict[int, float]], dict[str, float]]:  # fmt: skip
    """Median times, interleaved: each repeat runs every transport once, alternating the order."""

    def rounds(fns: dict[str, Callable[[], None]], n: int, tag: str) -> dict[str, float]:
        """``n`` timed runs of each callable (section names ``tag:name``); median seconds per name."""
        for fn in fns.values():
            fn()  # warm-up
        times: dict[str, list[float]] = {k: [] for k in fns}
        for r in range(n):
            for name in list(fns) if r % 2 == 0 else list(fns)[::-1]:
                with probe.section(f"{tag}:{name}"):
                    t0 = time.perf_counter()
                    fns[name]()
                    times[name].append(time.perf_counter() - t0)
        return {k: statistics.median(v) for k, v in times.items()}

    hs = rounds({k: b.handshake for k, b in benches.items()}, repeats * 4, "handshake")
    out: dict[str, dict[int, float]] = {k: {} for k in benches}
    for size in sizes:
        med = rounds({k: b.one(size) for k, b in benches.items()}, repeats, f"throughput:{size // MB}")
        for k, v in med.items():
            out[k][size] = v
    return out, hs


# -- report ----------------------------------------------------------------------------------


def report(sizes: list[int], repeats: int, times: dict[str, dict[int, float]], hs: dict[str, float],
           load: dict, command: str) -> dict:  # fmt: skip
    rows = []
    for s in sizes:
        mbps = {k: s / MB / times[k][s] for k in times}
        rows.append({"size_mb": s // MB, **{f"{k}_mb_s": round(v, 1) for k, v in mbps.items()},
                     "fltac_vs_ssl": round(mbps["fltac"] / mbps["ssl"], 3),
                     "fltac_vs_zmq": round(mbps["fltac"] / mbps["zmq"], 3)})  # fmt: skip
    return {
        "what": "one message client->server until acknowledged, loopback, medians",
        "repeats": repeats,
        "command": command,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "openssl": ssl.OPENSSL_VERSION, "zmq": zmq.zmq_version()},  # fmt: skip
        "load": load,
        "throughput": rows,
        "handshake_ms": {k: round(v * 1000, 2) for k, v in hs.items()},
        "target": "fltac >= 0.85x plain ssl at >= 16 MB (issue 9)",
        "target_met": all(r["fltac_vs_ssl"] >= 0.85 for r in rows if r["size_mb"] >= 16),
        "target_conclusive": load["idle"] is True,
    }


def markdown(res: dict) -> str:
    ld = res["load"]

    def la(v: list[float] | None) -> str:
        return "/".join(f"{x:.2f}" for x in v) if v else "n/a"

    def cpus(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f}"

    if ld["idle"] is None:
        verdict = "load of other processes not measurable here (no /proc/stat)"
    elif ld["idle"]:
        verdict = f"idle (other processes < {IDLE_OTHERS_CPUS} CPUs)"
    else:
        verdict = (f"**loaded: other processes kept {cpus(ld['others_cpus'])} of {res['machine']['cpus']} CPUs busy; "
                   "ratios differ from an idle machine's**")  # fmt: skip
    per = ", ".join(f"{k} {cpus(v)}" for k, v in ld["others_cpus_by_transport"].items())
    lines = [
        "# Transport benchmark",
        "",
        f"{res['what']}; {res['repeats']} repeats, transports interleaved. Machine: {res['machine']['cpus']} CPUs, "
        f"{res['machine']['openssl']}, libzmq {res['machine']['zmq']}.",
        "",
        f"Load measured: load average (1/5/15 min) {la(ld['loadavg_before'])} before, {la(ld['loadavg_after'])} after; "
        f"other processes used {cpus(ld['others_cpus'])} CPUs on average while the runs were timed ({per}): {verdict}.",
        "",
        f"Command: `{res['command']}`",
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
        f"Target ({res['target']}): {'met' if res['target_met'] else 'NOT met'}"
        + ("." if res["target_conclusive"] else " on this run; the target is for an idle machine."),
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
    ap.add_argument("--sizes", default="1,4,16,32,64,256", help="message sizes in MB, comma-separated")
    ap.add_argument("--repeats", type=int, default=9, help="timed repeats per size (median)")
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
    probe = LoadProbe()
    before = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    with tempfile.TemporaryDirectory() as tmp:
        pki = enroll_federation(Path(tmp), ["site1", "site2"])
        benches: dict[str, Bench] = {"fltac": FltacBench(pki, max(sizes)), "ssl": SslBench(pki), "zmq": ZmqBench()}
        try:
            times, hs = measure(benches, sizes, repeats, probe)
        finally:
            for b in benches.values():
                b.close()
    after = list(os.getloadavg()) if hasattr(os, "getloadavg") else None

    def others(keep: Callable[[str], bool]) -> float | None:
        v = probe.others(lambda k: k.startswith("throughput:") and keep(k))
        return None if v is None else round(v, 3)

    load = {
        "loadavg_before": before and [round(x, 2) for x in before],
        "loadavg_after": after and [round(x, 2) for x in after],
        "others_cpus": (all_ := others(lambda k: True)),
        "others_cpus_by_transport": {t: others(lambda k, t=t: k.endswith(f":{t}")) for t in benches},
        "others_cpus_by_size_mb": {s // MB: others(lambda k, s=s: k.startswith(f"throughput:{s // MB}:")) for s in sizes},
        "idle": None if all_ is None else all_ < IDLE_OTHERS_CPUS,
        "how": "others_cpus: busy CPU time of the whole machine (/proc/stat) minus this process's (all threads), "
        "per second of the timed throughput runs",
    }
    command = " ".join([".venv/bin/python", "benchmarks/transport.py", *sys.argv[1:]])
    res = report(sizes, repeats, times, hs, load, command)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "transport.json").write_text(json.dumps(res, indent=2) + "\n")
    (args.out / "transport.md").write_text(markdown(res))
    plot(res, args.out / "transport.png")
    print(markdown(res))


if __name__ == "__main__":
    main()
