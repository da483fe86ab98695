"""Run the ``fltac`` command in-process, as the console script does."""

from __future__ import annotations

from pathlib import Path

import pytest

from fltac_secure.cli import main


def fltac(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    """Run the CLI in-process like the console script does; return (exit code, stdout, stderr)."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err
