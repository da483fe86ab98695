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


def test_sigterm_stops_a_role_in_order_and_says_how_to_resume(tmp_path: Path) -> None:
    import signal
    import time

    fed = make_fed(tmp_path / "fed", tiny_plan())
    cmd = [sys.executable, "-c", "import sys; from fltac_secure.cli import main; main(sys.argv[1:])",
           "aggregator", "start", "--plan", str(fed.layout.plan_path),
           "--site", str(fed.layout.site_file("aggregator")), "--threads", "1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # wait until it is serving (waiting for sites)
            if "waiting for sites to join" in line:
                break
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            time.sleep(0.1)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err and "run the same command to resume" in err and "Traceback" not in err
