"""The CLI's last line of defence: an operating-system refusal is one clear line, not a traceback."""

from __future__ import annotations

import errno

import pytest

from fltac_secure.cli import main


def test_os_error_is_one_line_with_the_path(capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(SystemExit) as info:
        main(["ca", "init", "--dir", str(blocker / "ca")])  # a folder inside a file
    err = capsys.readouterr().err
    assert info.value.code == 1
    assert err.startswith("error: ") and str(blocker) in err and "Traceback" not in err


def test_full_disk_says_so(capsys, monkeypatch, tmp_path):
    import fltac_secure.pki.ca as ca

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "ca" / "ca.key"))

    monkeypatch.setattr(ca, "init_ca", full)
    import fltac_secure.cli.pki_cmd as pki_cmd

    monkeypatch.setattr(pki_cmd, "init_ca", full)
    with pytest.raises(SystemExit) as info:
        main(["ca", "init", "--dir", str(tmp_path / "ca")])
    err = capsys.readouterr().err
    assert info.value.code == 1 and "No space left on device" in err and "run the same command again" in err


def test_debug_is_in_help_and_does_what_it_says(capsys, monkeypatch, tmp_path):
    """The one-line internal error suggests --debug: --help lists it, and with it the traceback shows."""
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0 and "--debug" in capsys.readouterr().out
    import fltac_secure.cli.plan_cmd as plan_cmd

    def broken(*_a, **_k):
        raise RuntimeError("a bug")

    monkeypatch.setattr(plan_cmd, "load_plan", broken)
    with pytest.raises(SystemExit) as info:
        main(["plan", "hash", "x.yaml"])
    assert info.value.code == 1 and "re-run with --debug" in capsys.readouterr().err
    for args in (["--debug", "plan", "hash", "x.yaml"], ["plan", "hash", "x.yaml", "--debug"]):
        with pytest.raises(RuntimeError, match="a bug"):
            main(args)
