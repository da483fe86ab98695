"""Soak benchmark: can a good site still log in while the aggregator's transport is flooded?

The aggregator's ``TransportServer`` runs in its own process on 127.0.0.1 (its
memory is sampled from ``/proc/<pid>/status``: VmRSS, VmHWM, threads, open
fds). A second process floods it with

(a) stalled handshakes: ``--flood-conns`` DEALER connections held open at once,
    each sending a complete TLS ClientHello, a partial one, or only a record
    header, and then never continuing (each is closed after ``--stall-hold``
    seconds and replaced by a fresh one), and
(b) identity churn: ``--churn-rate`` connections per second that connect, send
    a few junk bytes, a partial or complete ClientHello (or nothing) and close,
    half of them at once (the bytes still go out: LINGER), half after up to
    ``--churn-hold`` seconds;

all bounded in count and time, loopback only, stopping by itself. Meanwhile a
good site (``TransportClient``, certificate on the roster) logs in again and
again: connect -> WELCOME -> one small message ACKed -> close; the time of that
is its login time. A login that fails or takes longer than ``--login-timeout``
counts as a failure (and as an infinite time in the p99).

Phases of one run: baseline (no flood), flood, after (no flood: recovery).
If the server process dies (e.g. its I/O thread crashed), the run stops at
once and the results say so, with the exit code and the tail of its stderr.

    .venv/bin/python benchmarks/soak.py                          # 20 s baseline, 60 s flood, 10 s after
    .venv/bin/python benchmarks/soak.py --quick --out /tmp/soak  # trial: 5 s / 15 s / 5 s, smaller flood (soak_quick.*)
    .venv/bin/python benchmarks/soak.py --plot-only              # redraw soak.png from soak.json

Writes benchmarks/results/soak.json, soak.md and soak.png. Targets (soak
issue): p99 login time under the flood <= 1 s; aggregator memory growth
(peak RSS minus RSS at start) < 50 MB. Exit code 0 when the run completed
(targets met or not), 3 when the server process died during the run.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import platform
import random
import resource
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FED, PLAN, KIND = "soak", "5" * 64, "SOAK_PING"
MB = 1 << 20
TARGET_P99_S = 1.0
TARGET_GROWTH_MB = 50.0
QUICK = {"baseline": 5.0, "duration": 15.0, "after": 5.0, "flood_conns": 150, "churn_rate": 100.0}


def _register_kind() -> None:
    from fltac_secure.transport import KindSpec, register_kind, registered_kinds, tensors_like

    if KIND not in registered_kinds():
        register_kind(KindSpec(KIND, tensors_like({"x": (["float32"], 1)}), max_tensors=1))


def _json_line(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# -- the aggregator process ------------------------------------------------------------------


def serve_main(cfg: dict[str, Any]) -> int:
    """Run a TransportServer until stdin closes; drain its inbox; report stats as JSON lines.

    Exit 0 after a clean close, 3 when the server's I/O thread failed (the error
    and its traceback go to stderr).
    """
    import logging
    import traceback

    from fltac_secure.errors import TransportError
    from fltac_secure.pki import server_context
    from fltac_secure.transport import TransportServer

    if cfg.get("nofile"):  # emulate a production default such as 1024 open files
        resource.setrlimit(resource.RLIMIT_NOFILE, (cfg["nofile"], resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=cfg["log_level"], stream=sys.stderr, format=fmt)
    _register_kind()
    ctx = server_context(Path(cfg["cert"]), Path(cfg["key"]), Path(cfg["ca"]), Path(cfg["crl"]))
    srv = TransportServer("tcp://127.0.0.1:*", ctx, cfg["roster"], FED, PLAN, **cfg["server_opts"]).start()
    _json_line({"event": "ready", "endpoint": srv.endpoint, "pid": os.getpid(), "t": time.time(),
                "nofile_limit": list(resource.getrlimit(resource.RLIMIT_NOFILE))})  # fmt: skip
    stop = threading.Event()

    def watch_stdin() -> None:  # the parent closes our stdin (or dies): stop
        sys.stdin.read()
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    received, next_stats = 0, 0.0
    while not stop.is_set():
        try:
            if srv.recv(timeout=0.1) is not None:
                received += 1
        except TransportError as exc:
            print(f"SOAK: the server failed: {exc}", file=sys.stderr)
            traceback.print_exception(exc, file=sys.stderr)
            sys.stderr.flush()
            _json_line({"event": "crashed", "t": time.time(), "error": str(exc)})
            os._exit(3)
        now = time.time()
        if now >= next_stats:
            next_stats = now + 0.25
            _json_line({"event": "stats", "t": now, "pending": srv.pending_connections(),
                        "peers": len(srv.peers()), "received": received})  # fmt: skip
    srv.close()
    _json_line({"event": "closed", "t": time.time(), "received": received})
    return 0


# -- the flooding process --------------------------------------------------------------------


def _client_hellos(n: int) -> list[bytes]:
    """``n`` complete TLS 1.3 ClientHellos (fresh key shares), as a client's first flight."""
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.check_hostname = False
    cctx.verify_mode = ssl.CERT_NONE
    cctx.minimum_version = ssl.TLSVersion.TLSv1_3
    out = []
    for _ in range(n):
        inc, outb = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = cctx.wrap_bio(inc, outb, server_hostname="localhost")
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        out.append(outb.read())
    return out


def flood_main(cfg: dict[str, Any]) -> int:
    """Flood ``cfg['endpoint']`` for ``cfg['duration']`` seconds; print a summary as a JSON line."""
    import zmq

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # our side of the flood, not the server's
    rng = random.Random(cfg["seed"])
    hellos = _client_hellos(16)
    ctx = zmq.Context()
    ctx.set(zmq.MAX_SOCKETS, min(ctx.get(zmq.SOCKET_LIMIT), 4 * (cfg["flood_conns"] + cfg["churn_concurrency"]) + 64))
    endpoint = cfg["endpoint"]
    counts: dict[str, int] = {}
    errors: dict[str, int] = {}
    replies = 0

    def bump(d: dict[str, int], key: str) -> None:
        d[key] = d.get(key, 0) + 1

    def payload(kind: str) -> bytes | None:
        hello = rng.choice(hellos)
        if kind == "full_hello":
            return hello
        if kind == "partial_hello":
            return hello[: rng.randint(1, len(hello) - 1)]
        if kind == "record_header":  # a handshake record that announces 16 KiB and never delivers
            return b"\x16\x03\x01\x40\x00"
        if kind == "junk":
            return rng.randbytes(rng.randint(1, 64))
        return None  # connect_only

    def open_one(kind: str, linger_ms: int) -> zmq.Socket | None:
        try:
            sock = ctx.socket(zmq.DEALER)
        except zmq.ZMQError as exc:
            bump(errors, f"socket: {exc}")
            return None
        sock.setsockopt(zmq.LINGER, linger_ms)
        sock.connect(endpoint)
        data = payload(kind)
        if data is not None:
            try:
                sock.send(data, zmq.NOBLOCK)
            except zmq.ZMQError as exc:
                bump(errors, f"send: {exc}")
        return sock

    stall_kinds = ["full_hello", "partial_hello", "record_header"]
    churn_kinds = ["full_hello", "partial_hello", "junk", "connect_only"]
    stalled: deque[tuple[float, zmq.Socket]] = deque()
    churn: list[tuple[float, int, zmq.Socket]] = []  # heap by close time
    stop = threading.Event()

    def watch_stdin() -> None:  # the parent closes our stdin (or dies): stop early, still report
        sys.stdin.read()
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    t_start = time.time()
    end = t_start + cfg["duration"]
    _json_line({"event": "started", "t": t_start})
    tokens, last, seq, next_poll, next_report = 0.0, t_start, 0, t_start + 1.0, t_start + 1.0
    max_stalled = max_churn_open = 0
    while True:
        now = time.time()
        if now >= end or stop.is_set():
            break
        while stalled and stalled[0][0] <= now:
            stalled.popleft()[1].close(0)
        for _ in range(min(cfg["flood_conns"] - len(stalled), 100)):  # at most 100 new per tick
            kind = stall_kinds[seq % len(stall_kinds)]
            seq += 1
            sock = open_one(kind, 0)
            if sock is None:
                break
            bump(counts, f"stalled_{kind}")
            stalled.append((now + cfg["stall_hold"], sock))
        while churn and churn[0][0] <= now:
            heapq.heappop(churn)[2].close()
        tokens = min(tokens + cfg["churn_rate"] * (now - last), max(1.0, cfg["churn_rate"] * 0.1))
        last = now
        while tokens >= 1 and len(churn) < cfg["churn_concurrency"]:
            tokens -= 1
            kind = churn_kinds[seq % len(churn_kinds)]
            seq += 1
            sock = open_one(kind, 200)
            if sock is None:
                break
            bump(counts, f"churn_{kind}")
            if rng.random() < 0.5:
                sock.close()  # vanish at once; LINGER still sends the bytes
            else:
                heapq.heappush(churn, (now + rng.uniform(0, cfg["churn_hold"]), seq, sock))
        max_stalled, max_churn_open = max(max_stalled, len(stalled)), max(max_churn_open, len(churn))
        if now >= next_poll:  # count the server's answers to stalled handshakes (read, never answered)
            next_poll = now + 1.0
            for _, sock in stalled:
                try:
                    while True:
                        sock.recv(zmq.NOBLOCK)
                        replies += 1
                except zmq.Again:
                    pass
        if now >= next_report:
            next_report = now + 1.0
            _json_line({"event": "progress", "t": now, "opened": sum(counts.values()), "stalled_open": len(stalled)})
        time.sleep(0.002)
    t_end = time.time()
    for _, sock in stalled:
        sock.close(0)
    for _, _, sock in churn:
        sock.close(0)
    ctx.term()  # waits at most the 200 ms LINGER of churn sockets
    _json_line({
        "event": "done", "t_start": t_start, "t_end": t_end, "counts": counts, "errors": errors,
        "stalled_replies": replies, "max_stalled_open": max_stalled, "max_churn_open": max_churn_open,
        "nofile_limit": [soft, hard], "stopped_early": stop.is_set(),
    })  # fmt: skip
    return 0


# -- the measuring process -------------------------------------------------------------------


class Child:
    """A subprocess of this script whose stdout is JSON lines (read by a thread) and stderr a file."""

    def __init__(self, mode: str, cfg: dict[str, Any], stderr_path: Path) -> None:
        self.stderr_path = stderr_path
        self._err = open(stderr_path, "wb")  # noqa: SIM115
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        self.proc = subprocess.Popen([sys.executable, __file__, mode, json.dumps(cfg)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._err, env=env)  # fmt: skip
        self.lines: list[dict[str, Any]] = []
        self.events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                obj = json.loads(raw)
            except ValueError:
                continue
            with self._lock:
                self.lines.append(obj)
                self.events.setdefault(obj.get("event", ""), threading.Event()).set()

    def wait_event(self, name: str, timeout: float) -> dict[str, Any] | None:
        """The first line with ``event == name``; None on timeout or if the process exits first."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                ev = self.events.setdefault(name, threading.Event())
            if ev.wait(0.05):
                return self.first(name)
            if self.proc.poll() is not None:
                time.sleep(0.2)  # let the reader catch the last lines
                return self.first(name)
        return None

    def first(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            return next((x for x in self.lines if x.get("event") == name), None)

    def all(self, name: str) -> list[dict[str, Any]]:
        with self._lock:
            return [x for x in self.lines if x.get("event") == name]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float) -> int | None:
        """Close stdin (the stop signal), then terminate, then kill; returns the exit code."""
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:
            pass
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None and self.proc.poll() is None:
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
                break
            except subprocess.TimeoutExpired:
                continue
        self._err.close()
        return self.proc.returncode

    def stderr_tail(self, lines: int = 40) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def read_proc(pid: int) -> dict[str, float] | None:
    """VmRSS/VmHWM (MB), threads, open fds and CPU seconds of ``pid``; None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, ValueError):
        return None
    out: dict[str, float] = {"fds": fds}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024  # kB -> MB
        elif key == "Threads":
            out["threads"] = int(value)
    if "VmRSS" not in out or "VmHWM" not in out:  # a zombie: the process has exited
        return None
    fields = stat.rsplit(")", 1)[1].split()
    out["cpu_s"] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


class Sampler(threading.Thread):
    """Samples ``read_proc(pid)`` every ``interval`` seconds until stopped or the process is gone."""

    def __init__(self, pid: int, t0: float, interval: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.t0, self.interval = pid, t0, interval
        self.samples: list[dict[str, float]] = []
        self.stopped = threading.Event()

    def sample(self) -> dict[str, float] | None:
        s = read_proc(self.pid)
        if s is not None:
            s["t"] = round(time.time() - self.t0, 3)
            self.samples.append(s)
        return s

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            if self.sample() is None:
                return


class Logins(threading.Thread):
    """The good site: log in, send one small message, wait for its ACK, close; again and again."""

    def __init__(self, site: str, endpoint: str, cctx: ssl.SSLContext, args: argparse.Namespace, t0: float,
                 server: Child) -> None:  # fmt: skip
        super().__init__(daemon=True)
        self.site, self.endpoint, self.cctx, self.args, self.t0, self.server = site, endpoint, cctx, args, t0, server
        self.records: list[dict[str, Any]] = []
        self.stopped = threading.Event()

    def one(self, i: int) -> dict[str, Any]:
        import numpy as np

        from fltac_secure.errors import FltacError
        from fltac_secure.transport import TransportClient

        a = self.args
        start = time.time()
        t0 = time.perf_counter()
        rec: dict[str, Any] = {"t": round(start - self.t0, 3), "site": self.site, "ok": False, "login_s": None,
                               "welcome_s": None}  # fmt: skip
        client = TransportClient(self.endpoint, self.cctx, self.site, FED, PLAN,
                                 handshake_timeout=a.client_handshake_timeout, max_attempts=a.client_attempts,
                                 backoff_base=0.05, backoff_max=1.0)  # fmt: skip
        try:
            client.connect(timeout=a.login_timeout)
            rec["welcome_s"] = round(time.perf_counter() - t0, 4)
            msg = client.message(KIND, meta={"i": i}, tensors={"x": np.full(64, i, np.float32)})
            client.send(msg, timeout=max(0.01, a.login_timeout - (time.perf_counter() - t0)))
            rec["ok"] = True
        except FltacError as exc:
            rec["error"] = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # noqa: BLE001 - a login failure of any kind is a result, not a crash of the benchmark
            rec["error"] = f"unexpected {type(exc).__name__}: {exc}"
        rec["login_s"] = round(time.perf_counter() - t0, 4)
        try:
            client.close()
        except Exception as exc:  # noqa: BLE001
            rec["close_error"] = repr(exc)
        return rec

    def run(self) -> None:
        i = 0
        while not self.stopped.is_set() and self.server.alive():
            rec = self.one(i)
            if not self.server.alive():
                rec["server_dead"] = True
            self.records.append(rec)
            i += 1
            self.stopped.wait(self.args.login_interval)


def _p(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by linear interpolation; math.inf entries allowed."""
    xs = sorted(values)
    if not xs:
        return math.nan
    k = (len(xs) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    if xs[hi] == math.inf:
        return math.inf if k > lo or xs[lo] == math.inf else xs[lo]
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def _num(x: float) -> float | None:
    """JSON-safe: None for inf/nan."""
    return None if x is None or not math.isfinite(x) else round(x, 4)


def phase_stats(records: list[dict[str, Any]], lo: float, hi: float) -> dict[str, Any]:
    rows = [r for r in records if lo <= r["t"] < hi]
    ok = [r["login_s"] for r in rows if r["ok"]]
    every = [r["login_s"] if r["ok"] else math.inf for r in rows]  # a failure counts as an infinite time
    errors: dict[str, int] = {}
    for r in rows:
        if not r["ok"]:
            key = str(r.get("error", "?"))[:160]
            errors[key] = errors.get(key, 0) + 1
    return {
        "window_s": [round(lo, 2), round(hi, 2)], "logins": len(rows), "ok": len(ok), "failed": len(rows) - len(ok),
        "median_s": _num(_p(every, 0.5)), "p99_s": _num(_p(every, 0.99)), "max_ok_s": _num(max(ok, default=math.nan)),
        "median_ok_s": _num(statistics.median(ok)) if ok else None, "p99_ok_s": _num(_p(ok, 0.99)),
        "errors": errors,
    }  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    import zmq

    from fltac_secure.pki import client_context
    from fltac_secure.pki.testing import enroll_federation

    _register_kind()
    load_before = os.getloadavg()
    server_opts = dict(args.server_opt)
    res: dict[str, Any] = {
        "what": "good-site logins (connect -> WELCOME -> one small message ACKed) while the aggregator's "
                "TransportServer (own process, 127.0.0.1) is flooded with stalled handshakes and identity churn",
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "config": {k: v for k, v in vars(args).items() if k not in ("out", "plot_only", "server_opt", "quick")},
        "server_opts": server_opts or "TransportServer defaults (= plan defaults: handshake 10 s, max_pending 256)",
        "machine": {"cpus": os.cpu_count(), "loadavg_before": [round(x, 2) for x in load_before],
                    "python": platform.python_version(), "openssl": ssl.OPENSSL_VERSION, "zmq": zmq.zmq_version(),
                    "pyzmq": zmq.__version__, "nofile_limit": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
                    "note": "shared machine, other jobs running; the flood, the server and the site share its cores"},
        "targets": {"p99_login_under_flood_s": TARGET_P99_S, "memory_growth_mb": TARGET_GROWTH_MB},
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="fltac-soak-") as tmp:
        tmp_path = Path(tmp)
        sites = [f"site{i + 1}" for i in range(args.sites)]
        pki = enroll_federation(tmp_path / "pki", sites)
        a = pki.paths("aggregator")
        server = Child("--serve", {"cert": str(a.cert), "key": str(a.key), "ca": str(a.ca), "crl": str(a.crl),
                                   "server_opts": server_opts, "log_level": args.server_log_level, "roster": sites,
                                   "nofile": args.server_nofile},
                       tmp_path / "server.stderr")  # fmt: skip
        flood: Child | None = None
        sampler: Sampler | None = None
        logins: list[Logins] = []
        marks: dict[str, float] = {}
        try:
            ready = server.wait_event("ready", 60)
            if ready is None:
                raise SystemExit(f"the server process did not start (exit {server.proc.poll()}):\n"
                                 f"{server.stderr_tail()}")  # fmt: skip
            t0 = time.time()
            res["server_nofile_limit"] = ready.get("nofile_limit")
            sampler = Sampler(server.proc.pid, t0, args.sample_interval)
            sampler.sample()
            sampler.start()
            for site in sites:
                p = pki.paths(site)
                logins.append(Logins(site, ready["endpoint"], client_context(p.cert, p.key, p.ca), args, t0, server))
                logins[-1].start()
                time.sleep(args.login_interval / len(sites))  # spread the sites' logins over the interval
            print(f"server pid {server.proc.pid} on {ready['endpoint']}; baseline {args.baseline:g} s", flush=True)

            def hold(seconds: float, until: Child | None = None) -> bool:
                """Sleep ``seconds`` (or until ``until`` exits); False as soon as the server has died."""
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    if not server.alive():
                        return False
                    if until is not None and not until.alive():
                        return True
                    time.sleep(0.1)
                return server.alive()

            alive = hold(args.baseline)
            marks["baseline_end"] = time.time() - t0
            if alive:
                flood = Child("--flood", {
                    "endpoint": ready["endpoint"], "duration": args.duration, "flood_conns": args.flood_conns,
                    "stall_hold": args.stall_hold, "churn_rate": args.churn_rate, "churn_hold": args.churn_hold,
                    "churn_concurrency": args.churn_concurrency, "seed": args.seed,
                }, tmp_path / "flood.stderr")  # fmt: skip
                started = flood.wait_event("started", 30)
                marks["flood_start"] = (started["t"] if started else time.time()) - t0
                print(f"flood started at t={marks['flood_start']:.1f} s for {args.duration:g} s", flush=True)
                alive = hold(args.duration + 15, until=flood)
                if alive:
                    flood.wait_event("done", 5)
                    done = flood.first("done")
                    marks["flood_end"] = (done["t_end"] if done else time.time()) - t0
                else:
                    print("the server process DIED during the flood; stopping", flush=True)
                    flood.stop(5)
            else:
                print("the server process DIED before the flood; stopping", flush=True)
            if alive and args.after > 0:
                print(f"flood over at t={marks['flood_end']:.1f} s; after-phase {args.after:g} s", flush=True)
                alive = hold(args.after)
                if not alive:
                    print("the server process DIED after the flood; stopping", flush=True)
            marks["end"] = time.time() - t0
        finally:
            if flood is not None:  # first: a dead server must not be flooded on
                flood.stop(5)
            for lg in logins:  # a login in flight ends within --login-timeout
                lg.stopped.set()
            for lg in logins:
                lg.join(args.login_timeout + 10)
            died = not server.alive()
            if sampler is not None:
                sampler.stopped.set()
                sampler.join(5)
                if not died:
                    sampler.sample()
            rc = server.stop(10)
        res["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
        res["server"] = {
            "survived": not died, "exit_code": rc,
            "died_at_s": None, "stderr_tail": server.stderr_tail(60 if died else 15),
        }  # fmt: skip
        if died:
            crashed = server.first("crashed")
            last = server.all("stats")
            res["server"]["died_at_s"] = round(((crashed or (last[-1] if last else {"t": time.time()}))["t"]) - t0, 2)
            res["server"]["error"] = crashed["error"] if crashed else None
        res["server"]["stats"] = [{"t": round(s["t"] - t0, 2), "pending": s["pending"], "peers": s["peers"]}
                                  for s in server.all("stats")]  # every 0.25 s
        res["server"]["received"] = (server.first("closed") or {}).get("received")
        if flood is not None:
            res["flood"] = flood_summary(flood, args)
        if died and res["server"]["died_at_s"] is not None:
            marks["server_died"] = res["server"]["died_at_s"]
        res["marks_s"] = {k: round(v, 2) for k, v in marks.items()}
        res["logins"] = sorted((r for lg in logins for r in lg.records), key=lambda r: r["t"])
        res["memory"] = memory_summary(sampler.samples if sampler else [])
    res["phases"] = phases(res["logins"], marks)
    res["verdict"] = verdict(res)
    return res


def flood_summary(flood: Child, args: argparse.Namespace) -> dict[str, Any]:
    done = flood.first("done")
    if done is None:
        progress = flood.all("progress")
        return {"completed": False, "opened_at_last_report": progress[-1]["opened"] if progress else 0,
                "stderr_tail": flood.stderr_tail(20)}  # fmt: skip
    span = max(1e-9, done["t_end"] - done["t_start"])
    counts = done["counts"]
    stalled = sum(v for k, v in counts.items() if k.startswith("stalled_"))
    churned = sum(v for k, v in counts.items() if k.startswith("churn_"))
    return {
        "completed": not done.get("stopped_early", False), "seconds": round(span, 2), "counts": counts,
        "errors": done["errors"],
        "stalled_opened": stalled, "churn_opened": churned,
        "stalled_per_s": round(stalled / span, 1), "churn_per_s": round(churned / span, 1),
        "connections_per_s": round((stalled + churned) / span, 1),
        "churn_rate_target": args.churn_rate, "max_stalled_open": done["max_stalled_open"],
        "max_churn_open": done["max_churn_open"], "server_replies_to_stalled": done["stalled_replies"],
    }  # fmt: skip


def memory_summary(samples: list[dict[str, float]]) -> dict[str, Any]:
    if not samples:
        return {"samples": []}
    start, end = samples[0], samples[-1]
    peak = max(max(s["VmHWM"] for s in samples), max(s["VmRSS"] for s in samples))
    return {
        "hwm_start_mb": round(start["VmHWM"], 1), "rss_start_mb": round(start["VmRSS"], 1),
        "rss_peak_mb": round(peak, 1), "rss_end_mb": round(end["VmRSS"], 1),
        "growth_peak_mb": round(peak - start["VmRSS"], 1), "growth_end_mb": round(end["VmRSS"] - start["VmRSS"], 1),
        "fds_start": start["fds"], "fds_max": max(s["fds"] for s in samples), "fds_end": end["fds"],
        "threads_max": max(s["threads"] for s in samples), "cpu_s": round(end["cpu_s"] - start["cpu_s"], 1),
        "samples": [{k: round(v, 2) for k, v in s.items()} for s in samples],
    }  # fmt: skip


def phases(records: list[dict[str, Any]], marks: dict[str, float]) -> dict[str, Any]:
    """Logins by start time: baseline, flood, after. Logins after the server died are in no phase
    but the last phase's window runs to the end, so the login in flight at the death counts there."""
    end = marks.get("end", math.inf)
    out = {"baseline": phase_stats(records, 0.0, marks.get("flood_start", end))}
    if "flood_start" in marks:
        out["flood"] = phase_stats(records, marks["flood_start"], marks.get("flood_end", end))
        if "flood_end" in marks and end > marks["flood_end"] and "server_died" not in marks:
            out["after"] = phase_stats(records, marks["flood_end"], end)
    return out


def verdict(res: dict[str, Any]) -> dict[str, Any]:
    flood = res["phases"].get("flood")
    mem = res["memory"]
    survived = res["server"]["survived"]
    p99 = flood["p99_s"] if flood else None
    p99_met = bool(survived and flood and flood["logins"] > 0 and p99 is not None and p99 <= TARGET_P99_S)
    growth = mem.get("growth_peak_mb")
    mem_met = bool(survived and growth is not None and growth < TARGET_GROWTH_MB)
    why = []
    if not survived:
        why.append(f"the server process died (exit {res['server']['exit_code']}) at t={res['server']['died_at_s']} s: "
                   "neither target counts as met")
    if flood is None or flood["logins"] == 0:
        why.append("no login was attempted under the flood")
    fl = res.get("flood")
    if survived and fl is not None and not fl.get("completed"):
        why.append("the flood stopped early (see flood); the run is not a full soak")
    if flood and flood["failed"]:
        why.append(f"{flood['failed']} of {flood['logins']} logins under the flood failed")
    return {"server_survived": survived, "p99_login_under_flood_met": p99_met, "memory_growth_met": mem_met,
            "p99_login_under_flood_s": p99, "memory_growth_peak_mb": growth, "notes": why}  # fmt: skip


# -- report ------------------------------------------------------------------------------------


def _ms(x: float | None, n: int = 1) -> str:
    if n == 0:
        return "-"
    return "inf (failures)" if x is None else f"{x * 1000:.0f}"


def markdown(res: dict[str, Any]) -> str:
    m, v, srv, mem = res["machine"], res["verdict"], res["server"], res["memory"]
    lines = [
        "# Soak benchmark: logins under a handshake flood",
        "",
        f"{res['what']}. Command: `{res['command']}`. Server options: {res['server_opts']}.",
        "",
        f"Machine: {m['cpus']} CPUs, load average (1/5/15 min) before {m['loadavg_before']}, after "
        f"{m.get('loadavg_after')}; {m['openssl']}, libzmq {m['zmq']}; server open-files limit "
        f"{(res.get('server_nofile_limit') or ['?'])[0]}. **{m['note']}.**",
        "",
    ]
    if not srv["survived"]:
        lines += [f"**The server process DIED at t={srv['died_at_s']} s (exit code {srv['exit_code']}).** "
                  "Tail of its stderr:", "", "```", srv["stderr_tail"], "```", ""]  # fmt: skip
    lines += [
        "| phase | window (s) | logins | failed | median (ms) | p99 (ms) | median ok (ms) | max ok (ms) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, p in res["phases"].items():
        lines.append(f"| {name} | {p['window_s'][0]}-{p['window_s'][1]} | {p['logins']} | {p['failed']} | "
                     f"{_ms(p['median_s'], p['logins'])} | {_ms(p['p99_s'], p['logins'])} | "
                     f"{_ms(p['median_ok_s'], p['ok'])} | {_ms(p['max_ok_s'], p['ok'])} |")  # fmt: skip
    lines += ["", "A failed or timed-out login counts as an infinite time in the median and p99."]
    for name, p in res["phases"].items():
        for err, n in p["errors"].items():
            lines.append(f"- {name}: {n} x `{err}`")
    f = res.get("flood")
    if f and "counts" in f:
        lines += [
            "",
            f"Flood{'' if f['completed'] else ' (STOPPED EARLY)'}: {f['seconds']} s, {f['stalled_opened']} stalled "
            f"handshakes ({f['stalled_per_s']}/s, up to "
            f"{f['max_stalled_open']} held at once), {f['churn_opened']} churn connections ({f['churn_per_s']}/s, "
            f"target {f['churn_rate_target']:g}/s); {f['connections_per_s']} connections/s in all; the server "
            f"answered {f['server_replies_to_stalled']} frames to stalled peers. By kind: {f['counts']}."
            + (f" Flood-side errors: {f['errors']}." if f["errors"] else ""),
        ]  # fmt: skip
    elif f:
        lines += ["", f"Flood did not complete: {f}"]
    if mem.get("samples"):
        lines += [
            "",
            f"Aggregator memory (RSS): start {mem['rss_start_mb']} MB, peak {mem['rss_peak_mb']} MB, end "
            f"{mem['rss_end_mb']} MB (growth to peak {mem['growth_peak_mb']} MB, to end {mem['growth_end_mb']} MB); "
            f"open fds {mem['fds_start']} -> max {mem['fds_max']} -> {mem['fds_end']}; CPU {mem['cpu_s']} s.",
        ]  # fmt: skip
    dead = "" if srv["survived"] else "; the server died, measured until then"
    flood_n = res["phases"].get("flood", {}).get("logins", 0)
    lines += [
        "",
        f"Target p99 login under the flood <= {TARGET_P99_S:g} s: "
        f"**{'met' if v['p99_login_under_flood_met'] else 'NOT met'}** "
        f"(p99 {_ms(v['p99_login_under_flood_s'], flood_n)} ms over {flood_n} logins{dead}).",
        f"Target memory growth < {TARGET_GROWTH_MB:g} MB: **{'met' if v['memory_growth_met'] else 'NOT met'}** "
        f"(peak minus start {v['memory_growth_peak_mb']} MB{dead}).",
    ]  # fmt: skip
    lines += [f"- {n}" for n in v["notes"]]
    return "\n".join(lines) + "\n"


def plot(res: dict[str, Any], path: Path) -> None:
    """Login time over the run (failures marked), the flood window shaded; aggregator RSS below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(8.5, 5), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    ok = [r for r in res["logins"] if r["ok"]]
    bad = [r for r in res["logins"] if not r["ok"]]
    ax.scatter([r["t"] for r in ok], [r["login_s"] * 1000 for r in ok], s=10, label="login (ok)")
    if bad:
        ax.scatter([r["t"] for r in bad], [r["login_s"] * 1000 for r in bad], s=30, marker="x", color="red",
                   label=f"failed / timed out ({len(bad)})")  # fmt: skip
    ax.axhline(TARGET_P99_S * 1000, color="gray", linestyle="--", linewidth=1, label="p99 target")
    ax.set_yscale("log")
    ax.set_ylabel("login time (ms)")
    marks = res["marks_s"]
    for a in (ax, ax2):
        if "flood_start" in marks:
            a.axvspan(marks["flood_start"], marks.get("flood_end", marks.get("end", 0)), color="orange", alpha=0.2,
                      label="flood" if a is ax else None)  # fmt: skip
        if not res["server"]["survived"] and res["server"]["died_at_s"] is not None:
            a.axvline(res["server"]["died_at_s"], color="red", linewidth=1.5, label="server died" if a is ax else None)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    samples = res["memory"].get("samples", [])
    lines = ax2.plot([s["t"] for s in samples], [s["VmRSS"] for s in samples], color="black", label="aggregator RSS")
    ax2.set_ylabel("RSS (MB)")
    ax2.set_xlabel("time since the server was ready (s)")
    stats = res["server"].get("stats", [])
    if stats:
        ax3 = ax2.twinx()
        lines += ax3.plot([s["t"] for s in stats], [s["pending"] for s in stats], color="tab:green", alpha=0.7,
                          label="pending sessions (right)")  # fmt: skip
        ax3.set_ylabel("pending sessions", color="tab:green")
        ax3.set_ylim(0, max(1, max(s["pending"] for s in stats)) * 1.1)
    ax2.legend(handles=lines, fontsize=7, loc="upper left")
    ax.set_title("Good-site login time under a handshake flood", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _server_opt(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: use KEY=VALUE, e.g. handshake_timeout=2")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] in ("--serve", "--flood"):  # internal: the two child processes
        cfg = json.loads(sys.argv[2])
        return serve_main(cfg) if sys.argv[1] == "--serve" else flood_main(cfg)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="\n".join(__doc__.splitlines()[2:]),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--baseline", type=float, default=20.0, help="seconds of logins before the flood (default 20)")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of flood (default 60)")
    ap.add_argument("--after", type=float, default=10.0, help="seconds of logins after the flood (default 10; 0: none)")
    ap.add_argument("--flood-conns", type=int, default=500,
                    help="stalled handshakes held open at once (default 500; the server's max_pending is 256)")
    ap.add_argument("--stall-hold", type=float, default=15.0,
                    help="seconds each stalled connection is held before it is replaced (default 15)")
    ap.add_argument("--churn-rate", type=float, default=200.0,
                    help="churn connections per second, target (default 200)")
    ap.add_argument("--churn-hold", type=float, default=0.2,
                    help="the longest a churn connection stays (default 0.2 s)")
    ap.add_argument("--churn-concurrency", type=int, default=200, help="churn connections open at once, at most")
    ap.add_argument("--sites", type=int, default=1,
                    help="good sites logging in concurrently, each with its own certificate (default 1)")
    ap.add_argument("--login-interval", type=float, default=0.2, help="pause between two logins (default 0.2 s)")
    ap.add_argument("--login-timeout", type=float, default=10.0,
                    help="a login (WELCOME + ACK) slower than this is a failure (default 10 s)")
    ap.add_argument("--client-handshake-timeout", type=float, default=3.0,
                    help="the site's TransportClient handshake_timeout: it retries on a fresh identity after this")
    ap.add_argument("--client-attempts", type=int, default=4, help="the site's TransportClient max_attempts")
    ap.add_argument("--server-opt", type=_server_opt, action="append", default=[], metavar="KEY=VALUE",
                    help="TransportServer keyword (JSON value), repeatable: --server-opt handshake_timeout=2 "
                         "--server-opt max_pending=64")
    ap.add_argument("--server-nofile", type=int, default=0,
                    help="RLIMIT_NOFILE (soft) of the server process, e.g. 1024 as on many hosts (default: inherit)")
    ap.add_argument("--server-log-level", default="WARNING", help="logging level of the server process (stderr)")
    ap.add_argument("--sample-interval", type=float, default=0.25, help="seconds between memory samples")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true",
                    help="short trial, written as soak_quick.*: "
                         + ", ".join(f"{k.replace('_', '-')} {v:g}" for k, v in QUICK.items())
                         + " (options left at their defaults)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for soak.json / soak.md / soak.png")
    ap.add_argument("--plot-only", action="store_true", help="redraw soak.png from the saved soak.json")
    args = ap.parse_args()
    stem = "soak_quick" if args.quick else "soak"
    if args.plot_only:
        plot(json.loads((args.out / f"{stem}.json").read_text()), args.out / f"{stem}.png")
        return 0
    if args.quick:
        for k, v in QUICK.items():
            if getattr(args, k) == ap.get_default(k):
                setattr(args, k, v)
    if args.baseline < 0 or args.duration <= 0 or args.after < 0 or args.flood_conns < 0 or args.churn_rate < 0:
        ap.error("durations must be >= 0 (--duration > 0), --flood-conns and --churn-rate >= 0")
    if args.sites < 1 or args.login_timeout <= 0 or args.login_interval < 0:
        ap.error("need --sites >= 1, --login-timeout > 0 and --login-interval >= 0")
    res = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(res, indent=1) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(res))
    plot(res, args.out / f"{stem}.png")
    print(markdown(res))
    print(f"wrote {args.out / stem}.json, .md, .png")
    return 0 if res["server"]["survived"] else 3


if __name__ == "__main__":
    sys.exit(main())
