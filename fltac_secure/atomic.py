"""Atomic file writes: readers see the old file or the whole new one, never a part.

Temp file in the same folder, fsync, rename, fsync of the folder: a crash at
any point leaves either the previous content or the new content on disk.
Used for every write that matters (checkpoints, ledgers, exports, PKI files).

A process killed between creating its temp file and the rename leaves that
temp file behind: ``.<target name>.<8 random characters>.tmp`` next to the
target (``tempfile.mkstemp`` with our prefix and suffix).  ``remove_stale_temps``
deletes exactly such files, and only when the roles start.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
from pathlib import Path

TEMP_SUFFIX = ".tmp"
TEMP_NAME = re.compile(r"\.(?P<target>[^/]+)\.[a-z0-9_]{8}\.tmp")
"""Names of this module's temp files: ``.`` + target name + ``.`` + mkstemp's 8 characters + ``.tmp``."""


def temp_prefix(path: Path) -> str:
    """The prefix of the temp files written for ``path`` (the suffix is ``TEMP_SUFFIX``)."""
    return f".{Path(path).name}."


def atomic_write_bytes(path: Path, data: bytes, *, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` atomically; ``mode`` sets the file's permissions before the rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path), suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically (newlines written as given)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def is_stale_temp(path: Path) -> bool:
    """True for a regular file (not a link, not a folder) named like ``atomic_write_bytes``'s temp files."""
    if TEMP_NAME.fullmatch(Path(path).name) is None:
        return False
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete the temp files that interrupted atomic writes left in ``folder`` (not its subfolders).

    Only call it at start, before this process writes there: a live writer's
    temp file would be deleted under it.  Anything not named like our temp
    files is left alone.  Returns the files removed (none if ``folder`` is absent).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in sorted(folder.iterdir()):
        if is_stale_temp(entry):
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed
