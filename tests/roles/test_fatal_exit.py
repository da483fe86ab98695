"""A fatal failure of the aggregator's own transport ends the process at once, with the reason.

The failure is injected into a real `fltac aggregator start` process by a wrapper that
patches the server's timer step to raise (a bug in the server's own code, not a peer's).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

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


@pytest.mark.parametrize(("role", "sig", "ready"), [
    ("aggregator", signal.SIGTERM, "waiting for sites to join"),
    ("aggregator", signal.SIGINT, "waiting for sites to join"),
    ("collaborator", signal.SIGINT, "loading data and model"),  # no aggregator: it is setting up, then retrying
])
def test_a_stopped_role_says_what_is_saved_and_how_to_resume(tmp_path: Path, role: str, sig: signal.Signals,
                                                             ready: str) -> None:
    """SIGTERM, or Ctrl-C (SIGINT), on either role: exit 128 + signal, what is saved where, the command to resume."""
    fed = make_fed(tmp_path / "fed", tiny_plan())
    name = "aggregator" if role == "aggregator" else "site1"
    plan, site = str(fed.layout.plan_path), str(fed.layout.site_file(name))
    cmd = [sys.executable, "-c", "import sys; from fltac_secure.cli import main; main(sys.argv[1:])",
           role, "start", "--plan", plan, "--site", site, "--threads", "1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    # a shell's background job (`pytest &`) starts with SIGINT ignored, and a child inherits that; give the role
    # the default disposition, as a terminal would
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # wait until it is under way
            if ready in line:
                break
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            time.sleep(0.1)
    assert proc.returncode == 128 + sig, err
    assert f"stopped by {'Ctrl-C' if sig == signal.SIGINT else 'SIGTERM'}" in err, err
    assert f"saved in {fed.site(name).workspace / 'state'}" in err or "checkpointed in" in err, err
    assert f"to resume, run the same command: fltac {role} start --plan {plan} --site {site}" in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_a_second_aggregator_on_a_busy_address_fails_at_once_and_leaves_nothing(tmp_path: Path) -> None:
    """The address is held (here by a plain listening socket, as by a running aggregator): the new
    aggregator stops with one line naming the address and the fix, before writing its workspace."""
    import yaml

    fed = make_fed(tmp_path / "fed", tiny_plan())
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        site = yaml.safe_load(fed.layout.site_file("aggregator").read_text())
        site.update(workspace=str(tmp_path / "second"), bind=f"tcp://127.0.0.1:{port}")
        for key, path in site["certs"].items():
            site["certs"][key] = str((fed.layout.aggregator / path).resolve())
        (tmp_path / "second.yaml").write_text(yaml.safe_dump(site))
        cmd = [sys.executable, "-c", "import sys; from fltac_secure.cli import main; main(sys.argv[1:])",
               "aggregator", "start", "--plan", str(fed.layout.plan_path), "--site", str(tmp_path / "second.yaml")]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 1, proc.stderr
    assert f"cannot bind tcp://127.0.0.1:{port}: the address is in use" in proc.stderr
    assert "set `bind` in the aggregator's site file" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "waiting for sites" not in proc.stdout
    assert not (tmp_path / "second").exists()  # no plan.yaml, ledger or state/ left behind
