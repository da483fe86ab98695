"""`fltac ca ...` and `fltac certs ...` through the real entry point: exit codes and messages."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from cli_run import fltac



def fingerprint_of(out: str) -> str:
    m = re.search(r"fingerprint:\s+([0-9a-f]{64})", out)
    assert m, out
    return m.group(1)


def test_whole_flow_from_the_cli(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    ca = tmp_path / "ca"
    assert fltac(capsys, "ca", "init", "--dir", ca, "--name", "test-ca")[0] == 0
    code, out, _ = fltac(capsys, "certs", "request", "--role", "aggregator", "--name", "agg", "--out", tmp_path / "agg")
    assert code == 0 and stat.S_IMODE(os.stat(tmp_path / "agg" / "agg.key").st_mode) == 0o600
    fp = fingerprint_of(out)
    code, out, err = fltac(capsys, "ca", "sign", tmp_path / "agg" / "agg.csr", "--ca-dir", ca)
    assert code == 2 and fingerprint_of(out) == fp and "without --fingerprint" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    spaced = ":".join(fp[i : i + 2] for i in range(0, 64, 2)).upper()
    code, out, _ = fltac(capsys, "ca", "sign", tmp_path / "agg" / "agg.csr", "--ca-dir", ca, "--fingerprint", spaced)
    assert code == 0 and "issued aggregator certificate for 'agg'" in out
    assert (tmp_path / "agg" / "agg.crt").exists() and (tmp_path / "agg" / "ca.crt").exists()
    code, out, _ = fltac(capsys, "certs", "show", tmp_path / "agg" / "agg.crt", "--json")
    info = json.loads(out)
    assert code == 0 and info["common_name"] == "agg" and info["role"] == "aggregator"
    assert info["sans"] == ["localhost", "127.0.0.1"]
    code, out, _ = fltac(capsys, "certs", "show", tmp_path / "agg" / "agg.crt")
    assert code == 0 and "subject:      CN=agg" in out
    r = subprocess.run(
        ["openssl", "verify", "-CAfile", str(tmp_path / "agg" / "ca.crt"), str(tmp_path / "agg" / "agg.crt")],
        capture_output=True, check=False,
    )
    assert r.returncode == 0
    assert fltac(capsys, "ca", "revoke", "agg", "--ca-dir", ca)[0] == 0
    code, out, _ = fltac(capsys, "ca", "list", "--ca-dir", ca, "--json")
    [entry] = json.loads(out)
    assert code == 0 and entry["name"] == "agg" and entry["role"] == "aggregator" and entry["revoked"] is True
    code, out, _ = fltac(capsys, "ca", "list", "--ca-dir", ca)
    assert code == 0 and "revoked" in out and entry["serial"] in out
    assert fltac(capsys, "ca", "crl", "--ca-dir", ca, "--days", "7")[0] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ca", "init", "--dir", "{ca}"], "already exists"),
        (["ca", "sign", "{tmp}/c1/c1.csr", "--ca-dir", "{ca}", "--fingerprint", "00" * 32], "fingerprint mismatch"),
        (["ca", "sign", "{tmp}/c1/c1.csr", "--ca-dir", "{ca}", "--fingerprint", "nothex"], "invalid fingerprint"),
        (["ca", "sign", "{tmp}/none.csr", "--ca-dir", "{ca}", "--fingerprint", "00" * 32], "not found"),
        (["ca", "revoke", "ghost", "--ca-dir", "{ca}"], "no certificate was issued"),
        (["ca", "list", "--ca-dir", "{tmp}/empty"], "no CA in"),
        (["certs", "request", "--role", "admin", "--name", "x", "--out", "{tmp}/x"], "invalid --role"),
        (["certs", "request", "--role", "collaborator", "--name", "c1", "--out", "{tmp}/c1"], "refusing to overwrite"),
        (["certs", "request", "--role", "collaborator", "--name", "x y", "--out", "{tmp}/x"], "invalid name"),
        (["certs", "show", "{ca}/index.json"], "is not a valid certificate: it is not PEM or DER (it looks like text)"),
        (["certs", "show", "{tmp}/c1/c1.key"], "is not a valid certificate: it holds a private key"),
    ],
)
def test_errors_exit_2_with_one_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    ca = tmp_path / "ca"
    assert fltac(capsys, "ca", "init", "--dir", ca)[0] == 0
    assert fltac(capsys, "certs", "request", "--role", "collaborator", "--name", "c1", "--out", tmp_path / "c1")[0] == 0
    code, _, err = fltac(capsys, *[a.format(ca=ca, tmp=tmp_path) for a in args])
    assert code == 2, err
    assert message in err and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert "ParseError" not in err and "asn1" not in err.lower()  # no parser internals


def test_fingerprint_mismatch_does_not_print_the_csrs_fingerprint(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Printing it would invite pasting it back, which defeats the out-of-band check."""
    ca = tmp_path / "ca"
    fltac(capsys, "ca", "init", "--dir", ca)
    _, out, _ = fltac(capsys, "certs", "request", "--role", "collaborator", "--name", "c1", "--out", tmp_path / "c1")
    fp = fingerprint_of(out)
    wrong = ("0" if fp[0] != "0" else "1") + fp[1:]
    code, out, err = fltac(capsys, "ca", "sign", tmp_path / "c1" / "c1.csr", "--ca-dir", ca, "--fingerprint", wrong)
    assert code == 2 and "fingerprint mismatch" in err and "do not sign it" in err
    assert fp not in out + err and "fltac certs show" in err
    # what the message tells the site to run prints the same fingerprint the request printed
    code, out, _ = fltac(capsys, "certs", "show", tmp_path / "c1" / "c1.csr")
    assert code == 0 and fingerprint_of(out) == fp and "request_for:" in out and "collaborator" in out


def test_duplicate_name_and_renew(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    ca = tmp_path / "ca"
    fltac(capsys, "ca", "init", "--dir", ca)
    for sub, extra in (("a", []), ("b", []), ("b", ["--renew"])):
        _, out, _ = fltac(capsys, "certs", "request", "--role", "collaborator", "--name", "c1", "--out", tmp_path / sub, "--force")
        code, _, err = fltac(
            capsys, "ca", "sign", tmp_path / sub / "c1.csr", "--ca-dir", ca, "--fingerprint", fingerprint_of(out), *extra
        )
        assert code == (2 if (sub, extra) == ("b", []) else 0), err
        if code == 2:
            assert "already holds a live certificate" in err and "--renew" in err


@pytest.mark.parametrize("group", [["ca"], ["certs"], *[["ca", c] for c in ("init", "sign", "revoke", "list", "crl")],
                                   ["certs", "request"], ["certs", "show"]])
def test_help_on_every_command(group: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = fltac(capsys, *group, "--help")
    assert code == 0 and "Usage:" in out and len(out) > 200


def test_console_script_exit_codes(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "fltac"
    if not exe.exists():
        pytest.skip("console script not installed")
    ok = subprocess.run([exe, "ca", "init", "--dir", tmp_path / "ca"], capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    again = subprocess.run([exe, "ca", "init", "--dir", tmp_path / "ca"], capture_output=True, text=True, check=False)
    assert again.returncode == 2 and "Traceback" not in again.stderr and "already exists" in again.stderr
