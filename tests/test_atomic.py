"""Atomic writes: the temp-file names they use, and removing the ones a killed writer left behind."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from fltac_secure import atomic
from fltac_secure.atomic import TEMP_NAME, atomic_write_bytes, remove_stale_temps


def test_the_temp_files_written_match_the_pattern_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ties ``TEMP_NAME`` to what ``tempfile.mkstemp`` really makes: a Python that names them otherwise fails here."""
    made: list[str] = []
    real = tempfile.mkstemp

    def spy(*args: Any, **kwargs: Any) -> tuple[int, str]:
        fd, name = real(*args, **kwargs)
        made.append(name)
        return fd, name

    monkeypatch.setattr(atomic.tempfile, "mkstemp", spy)
    for target in ("checkpoint.json", "server-000001.safetensors", "a.b.c", ".hidden"):
        atomic_write_bytes(tmp_path / target, b"x")
    assert len(made) == 4
    for name in made:
        assert TEMP_NAME.fullmatch(Path(name).name), name


def test_a_writer_killed_before_its_rename_leaves_a_temp_file_that_is_removed(tmp_path: Path) -> None:
    script = (
        "import os, sys\n"
        "from fltac_secure import atomic\n"
        "os.replace = lambda *a: os._exit(9)  # the process dies between fsync and rename\n"
        "atomic.atomic_write_bytes(sys.argv[1], b'new')\n"
    )
    target = tmp_path / "state" / "checkpoint.json"
    target.parent.mkdir()
    target.write_bytes(b"old")
    done = subprocess.run([sys.executable, "-c", script, str(target)], check=False)
    assert done.returncode == 9
    left = [p for p in target.parent.iterdir() if p != target]
    assert len(left) == 1 and left[0].read_bytes() == b"new" and target.read_bytes() == b"old"
    assert remove_stale_temps(target.parent) == left
    assert [p.name for p in target.parent.iterdir()] == ["checkpoint.json"]
