"""Task files: CSV and JSONL round trips, and one clear DataError per kind of bad file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fltac_secure.data import TaskDataset, load_task_file, write_task_csv
from fltac_secure.errors import DataError
from fltac_secure.plan import Task

TASK = Task(name="spam", labels=["ham", "spam"])
TRICKY = ["plain", 'with "quotes", and commas', "NA", "1", "null", "  padded  ", "ünïcödé ✓", "two\nlines"]


def _ds() -> TaskDataset:
    return TaskDataset("spam", list(TRICKY), np.arange(len(TRICKY)) % 2)


def test_csv_round_trip_keeps_every_text_as_a_string(tmp_path: Path) -> None:
    ds = _ds()
    write_task_csv(tmp_path / "d.csv", ds, TASK)
    assert (tmp_path / "d.csv").read_text(encoding="utf-8").splitlines()[0] == "text,label"
    back = load_task_file(tmp_path / "d.csv", TASK)
    assert back.texts == ds.texts and np.array_equal(back.labels, ds.labels)
    assert back.labels.dtype == np.int64


def test_jsonl_round_trip_with_custom_columns(tmp_path: Path) -> None:
    ds = _ds()
    lines = [json.dumps({"msg": t, "cls": TASK.labels[y], "extra": 1}) for t, y in zip(ds.texts, ds.labels)]
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    back = load_task_file(tmp_path / "d.jsonl", TASK, text_column="msg", label_column="cls")
    assert back.texts == ds.texts and np.array_equal(back.labels, ds.labels)


def test_integer_labels_in_json_match_label_names_that_are_digits(tmp_path: Path) -> None:
    task = Task(name="digits", labels=["0", "1"])
    (tmp_path / "d.jsonl").write_text('{"text": "a", "label": 1}\n{"text": "b", "label": 0}\n')
    assert load_task_file(tmp_path / "d.jsonl", task).labels.tolist() == [1, 0]


def _write(tmp_path: Path, name: str, content: str) -> Path:
    p = tmp_path / name
    p.write_text(content, encoding="utf-8")
    return p


@pytest.mark.parametrize(
    ("name", "content", "kwargs", "fragments"),
    [
        ("d.csv", "text,label\nhi,ham\n", {"text_column": "body"}, ["no column 'body'", "['label', 'text']", "text_column"]),
        ("d.csv", "text,category\nhi,ham\n", {}, ["no column 'label'", "label_column"]),
        ("d.csv", "text,label\nhi,ham\nyo,eggs\nho,bacon\nzz,eggs\n", {}, ["3 example(s)", "'eggs', 'bacon'", "['ham', 'spam']"]),
        ("d.csv", "", {}, ["is empty"]),
        ("d.csv", "text,label\n", {}, ["no examples"]),
        ("d.jsonl", '{"text": "ok", "label": "ham"}\n{"text": 42, "label": "spam"}\n', {}, ["example 2", "non-empty string", "42"]),
        ("d.jsonl", '{"text": "ok", "label": "ham"}\n{"text": "  ", "label": "spam"}\n', {}, ["example 2", "non-empty string"]),
        ("d.jsonl", '{"text": "ok", "label": true}\n', {}, ["not among the labels of task 'spam'", "True"]),
        ("d.txt", "hi\n", {}, ["suffix '.txt'", ".csv, .jsonl or .json"]),
        ("d.jsonl", '{"text": "a", "label": "ham"}\n\n{"text": "ok", "label": "ham"\n', {},
         ["line 3, column 30", "not valid JSON", "delimiter"]),
        ("d.jsonl", '{"text": "a", "label": "ham"}\n["b", "ham"]\n', {}, ["line 2", "a JSON list, not an object"]),
        ("d.json", '[{"text": "ok", "label": "ham"}', {}, ["cannot read data file", "JSON"]),
        ("d.csv", b"text,label\nok,ham\ncaf\xe9,spam\n", {}, ["line 3", "not UTF-8", "0xe9", "save the file as UTF-8"]),
    ],
)
def test_bad_files_give_one_clear_data_error(tmp_path: Path, capfd: pytest.CaptureFixture[str], name, content,
                                             kwargs, fragments) -> None:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    capfd.readouterr()
    with pytest.raises(DataError) as e:
        load_task_file(path, TASK, **kwargs)
    assert capfd.readouterr().err == ""  # reported once, by the error: no library logging the same problem
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg
    for f in fragments:
        assert f in msg
    assert e.value.exit_code == 2


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_task_file(tmp_path / "nope.csv", TASK)


def test_dataset_checks_shapes_and_subsets() -> None:
    with pytest.raises(DataError, match="one label per text"):
        TaskDataset("t", ["a", "b"], np.array([0]))
    with pytest.raises(DataError, match=">= 0"):
        TaskDataset("t", ["a"], np.array([-1]))
    ds = TaskDataset("t", ["a", "b", "c"], np.array([0, 1, 0], dtype=np.int32))
    assert ds.labels.dtype == np.int64
    sub = ds.subset(np.array([2, 0]))
    assert sub.texts == ["c", "a"] and sub.labels.tolist() == [0, 0] and len(sub) == 2


def test_write_refuses_label_ids_without_names(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no name"):
        write_task_csv(tmp_path / "x.csv", TaskDataset("spam", ["a"], np.array([5])), TASK)
    assert not (tmp_path / "x.csv").exists()
