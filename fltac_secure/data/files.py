"""Task data from ordinary files (CSV or JSONL) and atomic writes of such files.

Files carry label *names* (self-describing); they are mapped to ids through
the plan task's ``labels``. CSV and JSON files are read with ``datasets``
offline; JSON Lines with the standard ``json`` module one line at a time, so a
broken line is reported once, by its line number.  Every problem is a
DataError naming the file, the line, column or value, and the fix.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from fltac_secure.atomic import atomic_write_text
from fltac_secure.data.dataset import TaskDataset
from fltac_secure.errors import DataError
from fltac_secure.plan.schema import Task

CSV_SUFFIXES = {".csv"}
JSON_SUFFIXES = {".jsonl", ".json"}


def _read_columns(path: Path) -> dict[str, list[Any]]:
    """All columns of a CSV/JSONL file as lists, read with ``datasets`` (offline, no progress bars)."""
    import datasets  # noqa: PLC0415 - heavy import, only when files are read

    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        # Every cell stays a string: no "NA" -> NaN, no "1" -> int.
        kwargs: dict[str, Any] = {"keep_default_na": False, "na_filter": False}
        builder = "csv"
    elif suffix in JSON_SUFFIXES:
        kwargs, builder = {}, "json"
    else:
        raise DataError(f"data file {path} has suffix {path.suffix!r}; use .csv, .jsonl or .json")
    if not path.is_file():
        raise DataError(f"data file {path} does not exist; check the path in the site file")
    if path.stat().st_size == 0:
        raise DataError(f"data file {path} is empty; it needs a header (CSV) and at least one example")
    _check_utf8(path)
    if suffix == ".jsonl":
        return _read_json_lines(path)
    was_disabled = datasets.utils.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # it logs the parser error we report ourselves
    try:
        if builder == "csv":
            with path.open(encoding="utf-8-sig", newline="") as f:
                header = next(csv.reader(f), [])
            kwargs["converters"] = {name: str for name in header}
        # A private throw-away cache: no stale entries, no growth of ~/.cache, no lock
        # contention between site processes; the table is kept in memory.
        with tempfile.TemporaryDirectory(prefix="fltac-ds-") as cache:
            ds = datasets.load_dataset(
                builder, data_files=str(path), split="train", cache_dir=cache, keep_in_memory=True, **kwargs
            )
            return {name: list(ds[name]) for name in ds.column_names}
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - any parser failure becomes one clear line
        cause = e.__cause__ or e
        if "corresponds to no data" in str(e):  # datasets' words for a header without rows
            raise DataError(f"data file {path} has no examples; it needs at least one row") from None
        raise DataError(f"cannot read data file {path} as {builder.upper()}: {cause}".splitlines()[0]) from None
    finally:
        datasets.logging.set_verbosity(verbosity)
        if not was_disabled:
            datasets.enable_progress_bars()


def _check_utf8(path: Path) -> None:
    """Refuse a file that is not UTF-8, naming the first bad line (a legacy encoding such as Latin-1)."""
    with path.open("rb") as f:
        for number, line in enumerate(f, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(
                    f"data file {path}, line {number}: not UTF-8 (byte {line[e.start]:#04x} at column {e.start + 1}); "
                    "save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"
                ) from None


def _read_json_lines(path: Path) -> dict[str, list[Any]]:
    """Columns of a JSON Lines file: one object per line, blank lines skipped, missing keys as None."""
    rows: list[dict[str, Any]] = []
    with path.open(encoding="utf-8-sig") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as e:
                raise DataError(f"data file {path}, line {number}, column {e.pos + 1}: not valid JSON ({e.msg}); "
                                "each line must be one JSON object, e.g. {\"text\": \"...\", \"label\": \"...\"}") from None
            if not isinstance(row, dict):
                raise DataError(f"data file {path}, line {number}: a JSON {type(row).__name__}, not an object; "
                                "each line must be one JSON object, e.g. {\"text\": \"...\", \"label\": \"...\"}")
            rows.append(row)
    if not rows:
        raise DataError(f"data file {path} has no examples; it needs at least one line")
    names = list(dict.fromkeys(k for row in rows for k in row))
    return {name: [row.get(name) for row in rows] for name in names}


def _label_id(value: Any, index: dict[str, int]) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    return index.get(str(value))


def load_task_file(path: Path, task: Task, text_column: str = "text", label_column: str = "label") -> TaskDataset:
    """Read one task's examples from a CSV or JSONL file (chosen by suffix).

    Raises DataError for a missing or empty file, a missing column, a text that is
    not a non-empty string, or a label that is not one of ``task.labels``.
    """
    path = Path(path)
    cols = _read_columns(path)
    for col, what in ((text_column, "text_column"), (label_column, "label_column")):
        if col not in cols:
            raise DataError(
                f"data file {path} has no column {col!r} (columns: {sorted(cols)}); "
                f"rename the column or set {what} for task {task.name!r} in the site file"
            )
    texts, raw_labels = cols[text_column], cols[label_column]
    if not texts:
        raise DataError(f"data file {path} has no examples; task {task.name!r} needs at least one")
    for row, t in enumerate(texts, start=1):
        if not isinstance(t, str) or not t.strip():
            raise DataError(
                f"data file {path}, example {row}: column {text_column!r} must be a non-empty string, "
                f"got {t!r}; fix or remove that example"
            )
    index = {name: i for i, name in enumerate(task.labels)}
    ids = [_label_id(v, index) for v in raw_labels]
    bad = [raw_labels[i] for i, v in enumerate(ids) if v is None]
    if bad:
        uniq = list(dict.fromkeys(repr(b) for b in bad))
        raise DataError(
            f"data file {path}: {len(bad)} example(s) have a label not among the labels of task {task.name!r} "
            f"{task.labels} (e.g. {', '.join(uniq[:5])}); fix the file or the plan's task labels"
        )
    return TaskDataset(task.name, list(texts), np.asarray(ids, dtype=np.int64))


def task_csv_text(ds: TaskDataset, task: Task, rows: Iterable[int] | None = None) -> str:
    """CSV text (header ``text,label``) with label *names*, so the file is self-describing."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["text", "label"])
    for i in range(len(ds)) if rows is None else rows:
        w.writerow([ds.texts[i], task.labels[int(ds.labels[i])]])
    return buf.getvalue()


def write_task_csv(path: Path, ds: TaskDataset, task: Task) -> None:
    """Atomically write ``ds`` as a ``text,label`` CSV with label names."""
    if len(ds) and int(ds.labels.max()) >= task.num_labels:
        raise DataError(f"task {task.name!r}: label id {int(ds.labels.max())} has no name in {task.labels}")
    atomic_write_text(path, task_csv_text(ds, task))
