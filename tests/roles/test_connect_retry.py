"""A collaborator started before its aggregator: every retry logged (endpoint, backoff), a plan-level
limit (``timeouts.connect_s``) after which it stops with a clear message; `ping` says nobody is there."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
from rich.console import Console
from roles_harness import make_fed, start, tiny_plan

from fltac_secure.cli import main
from fltac_secure.errors import TransportError
from fltac_secure.federation.console import EventLog

TIMEOUTS = {"handshake_s": 1, "round_s": 30, "idle_s": 30, "connect_s": 4}


def _log(name: str) -> tuple[EventLog, io.StringIO]:
    buf = io.StringIO()
    return EventLog(name, Console(file=buf, width=400, soft_wrap=True)), buf


def test_no_aggregator_every_retry_logged_then_a_clear_stop(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fed = make_fed(tmp_path / "fed", tiny_plan(sites=1, quorum=1, timeouts=TIMEOUTS))
    endpoint = fed.layout.endpoint
    with pytest.raises(SystemExit) as exc:  # `fltac collaborator ping` names the endpoint nobody answers at
        main(["collaborator", "ping", "--plan", str(fed.layout.plan_path), "--site", str(fed.layout.site_file("site1")),
              "--timeout", "1.5"])
    err = capsys.readouterr().err
    assert exc.value.code == 1 and f"error: no aggregator at {endpoint}: nothing answered within 1.5 s" in err, err

    log, buf = _log("site1")
    col = fed.collaborator("site1", log=log)
    started = time.monotonic()
    with pytest.raises(TransportError) as info:
        col.run()
    assert time.monotonic() - started >= 4  # not before the plan's limit
    msg = str(info.value)
    assert f"no aggregator at {endpoint}: nothing answered for 4 s (timeouts.connect_s)" in msg
    assert "start the aggregator first" in msg
    retries = [line for line in buf.getvalue().splitlines() if f"no aggregator at {endpoint} yet" in line]
    assert len(retries) >= 2, buf.getvalue()  # one line per attempt (each lasts handshake_s = 1 s)
    assert "nothing answered within 1 s" in retries[0] and "next attempt in" in retries[0], retries[0]
    assert "giving up in" in retries[0] and "(timeouts.connect_s)" in retries[0], retries[0]


def test_collaborator_first_then_aggregator_the_run_completes(tmp_path: Path) -> None:
    fed = make_fed(tmp_path / "fed", tiny_plan(sites=1, rounds=1, quorum=1,
                                              timeouts={**TIMEOUTS, "connect_s": 120}))
    log, buf = _log("site1")
    col = start(fed.collaborator("site1", log=log))
    deadline = time.monotonic() + 60
    while "no aggregator at" not in buf.getvalue():
        assert time.monotonic() < deadline and not col.error, (buf.getvalue(), col.error)
        time.sleep(0.2)
    agg = start(fed.aggregator())
    agg.join(120)
    col.join(120)
    assert not agg.error and not col.error, (agg.error, col.error, buf.getvalue())
    assert f"connected to {fed.layout.endpoint}" in buf.getvalue()
