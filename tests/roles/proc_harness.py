"""Helpers for the process tests: each role is its own OS process, as `fltac aggregator|collaborator start`.

The tests steer the processes only from outside, as an operator would: by
reading what they leave on disk (each role's ``ledger.jsonl``, fsync'd line by
line, is the reliable clock: it records every message the moment it is sent or
decoded) and by sending them real signals.  Every process's stdout and stderr
go to ``<root>/logs/<name>.log``, which assertion messages quote.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fltac_secure.data.layout import AGGREGATOR
from fltac_secure.federation.demo import FederationLayout
from fltac_secure.federation.demo_run import role_command

REPO = Path(__file__).resolve().parents[2]


@dataclass
class RoleProc:
    """One role running as a process; its output goes to ``log``."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    workspace: Path
    signals: list[str] = field(default_factory=list)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.is_file() else ""

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.text().splitlines()[-n:])

    def send(self, sig: signal.Signals) -> None:
        """Send ``sig`` to this process (only to it: its pid, never a name or a group)."""
        self.signals.append(sig.name)
        self.proc.send_signal(sig)

    def stopped(self) -> bool:
        """True while the process is stopped (SIGSTOP took effect: state T in /proc)."""
        try:
            stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        except OSError:
            return False
        return stat.rpartition(")")[2].split()[0] in ("T", "t")

    def ledger(self) -> list[dict[str, Any]]:
        """The role's ledger so far (a torn last line is skipped: it is being written)."""
        path = self.workspace / "ledger.jsonl"
        rows = []
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
        return rows

    def rows(self, direction: str, kind: str, rnd: int | None = None, peer: str | None = None) -> list[dict[str, Any]]:
        """Ledger lines of ``kind`` sent/received (of round ``rnd``, to/from ``peer``, when given)."""
        return [r for r in self.ledger() if r["direction"] == direction and r["kind"] == kind
                and (rnd is None or r["round"] == rnd) and (peer is None or r["peer"] == peer)]  # fmt: skip

    def has(self, direction: str, kind: str, rnd: int | None = None, peer: str | None = None) -> bool:
        """True once the ledger records such a message (see ``rows``)."""
        return bool(self.rows(direction, kind, rnd, peer))


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}  # fmt: skip


def launch(layout: FederationLayout, name: str, *, attempt: int = 0) -> RoleProc:
    """Start the role ``name`` (the aggregator or a site) exactly as `fltac demo` does.

    ``attempt`` > 0: a restart with the same command; its output goes to ``<name>.<attempt>.log``
    (the earlier logs stay for the assertion messages).
    """
    logs = layout.root / "logs"
    logs.mkdir(exist_ok=True)
    log = logs / (f"{name}.{attempt}.log" if attempt else f"{name}.log")
    with open(log, "wb") as fh:
        proc = subprocess.Popen(role_command(layout, name), stdout=fh, stderr=subprocess.STDOUT,
                                env=_env(), cwd=layout.root)  # fmt: skip
    folder = layout.aggregator if name == AGGREGATOR else layout.sites[name]
    return RoleProc(name, proc, log, folder)


def start_federation(layout: FederationLayout, timeout: float = 120.0) -> dict[str, RoleProc]:
    """Every site, then the aggregator once the sites have imported their code.

    The aggregator waits ``timeouts.join_s`` for all sites to join; starting
    it last keeps the sites' (slow, on a loaded machine) start-up outside that
    window, so every site is in round 0.  A site connects as soon as the
    aggregator listens (ZeroMQ retries the connection).
    """
    procs = {name: launch(layout, name) for name in layout.sites}
    try:
        wait_until("the sites to start", lambda: all("loading data and model" in p.text() for p in procs.values()),
                   list(procs.values()), timeout)
    except BaseException:
        cleanup(procs.values())
        raise
    return {AGGREGATOR: launch(layout, AGGREGATOR), **procs}


def report(procs: Iterable[RoleProc]) -> str:
    """Exit codes and the last lines of every process (for assertion messages)."""
    parts = []
    for p in procs:
        parts.append(f"--- {p.name} ({p.log.name}): returncode {p.proc.poll()}, signals sent {p.signals}\n{p.tail()}")
    return "\n".join(parts)


def wait_until(what: str, cond: Callable[[], bool], procs: list[RoleProc], timeout: float,
               *, may_exit: Iterable[str] = ()) -> None:
    """Poll ``cond`` every 20 ms; fail (with every log tail) on timeout or if a process exits unexpectedly."""
    allowed = set(may_exit)
    deadline = time.monotonic() + timeout
    while not cond():
        gone = [p for p in procs if p.name not in allowed and p.proc.poll() is not None]
        if gone:
            raise AssertionError(f"waiting for {what}: {gone[0].name} exited early\n{report(procs)}")
        if time.monotonic() > deadline:
            raise AssertionError(f"waiting for {what}: not within {timeout:g} s\n{report(procs)}")
        time.sleep(0.02)


def wait_exit(p: RoleProc, timeout: float, procs: list[RoleProc]) -> int:
    try:
        return p.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{p.name} did not exit within {timeout:g} s\n{report(procs)}") from None


def cleanup(procs: Iterable[RoleProc]) -> None:
    """Continue and kill whatever is still running (each by its own pid), and reap it."""
    for p in procs:
        if p.proc.poll() is None:
            try:
                p.proc.send_signal(signal.SIGCONT)
                p.proc.kill()
            except ProcessLookupError:
                pass
    for p in procs:
        try:
            p.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass


def history(agg: RoleProc) -> dict[int, dict[str, Any]]:
    """The aggregator's per-round records (out/metrics.jsonl), by round (a retried round: its last record)."""
    path = agg.workspace / "out" / "metrics.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []
    return {row["round"]: row for row in rows}
