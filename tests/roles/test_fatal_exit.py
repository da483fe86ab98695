"""A fatal failure of the aggregator's own transport ends the process at once, with the reason.

The failure is injected into a real `fltac aggregator start` process by a wrapper that
patches the server's timer step to raise (a bug in the server's own code, not a peer's).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from roles_harness import make_fed, tiny_plan

WRAPPER = """
import sys, time
from fltac_secure.transport import server
started = time.monotonic()
step = server.TransportServer._timers
def failing(self, now):
    if time.monotonic() - started > 1.0:
        raise RuntimeError("injected server bug")
    return step(self, now)
server.TransportServer._timers = failing
from fltac_secure.cli import main
main(sys.argv[1:])
"""


def test_transport_failure_stops_the_aggregator_process_with_the_reason(tmp_path: Path) -> None:
    fed = make_fed(tmp_path / "fed", tiny_plan())
    cmd = [sys.executable, "-c", WRAPPER, "aggregator", "start", "--plan", str(fed.layout.plan_path),
           "--site", str(fed.layout.site_file("aggregator")), "--threads", "1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert proc.returncode == 1, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "error: transport I/O thread failed: RuntimeError('injected server bug')" in proc.stderr
    assert "Traceback" not in proc.stderr
    # the port is free again: the process really is gone
    endpoint = fed.site("aggregator").bind or ""
    host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, int(port)))
