"""Check a collaborator's data files against the plan before a run (`fltac plan validate --site`).

Each file is read exactly as the collaborator will read it (``load_task_file``),
so whatever would stop `collaborator start` - a missing or empty file, a
non-UTF-8 byte, a broken JSON line, a missing column, a label the plan does not
know - is reported here, one line per file, plus too few examples for a task.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fltac_secure.data.files import load_task_file
from fltac_secure.errors import DataError

if TYPE_CHECKING:
    from fltac_secure.plan import Plan, Site

MIN_TRAIN_EXAMPLES = 10
"""Fewest training examples a task slot may have: below this its adapter learns noise, and its
sketch and update are mostly the common start (with DP, also 1/delta)."""


def data_problems(site: Site, plan: Plan) -> list[str]:
    """One line per problem with the site's data files (names the site-file key, the file and the fix)."""
    problems: list[str] = []
    for name, entry in site.data.items():
        task = plan.task(name)
        if entry.test is not None and entry.test == entry.train:
            problems.append(f"data.{name}.test: the same file as data.{name}.train; local test accuracy would be "
                            "measured on training data - give a held-out file or remove `test`")
        for part, path in (("train", entry.train), ("test", entry.test)):
            if path is None:
                continue
            try:
                ds = load_task_file(path, task, entry.text_column, entry.label_column)
            except DataError as exc:
                problems.append(f"data.{name}.{part}: {exc}")
                continue
            if part == "train":
                problems += [f"data.{name}.train: {p}" for p in _count_problems(len(ds), plan, str(path))]
    return problems


def _count_problems(n: int, plan: Plan, path: str) -> list[str]:
    fix = "add examples, or remove the task from this site file"
    out = []
    if n < MIN_TRAIN_EXAMPLES:
        out.append(f"{path} has {n} example(s); a task needs at least {MIN_TRAIN_EXAMPLES} to train on; {fix}")
    p = plan.privacy
    if p.dp and p.delta >= 1 / n:
        out.append(f"{path} has {n} example(s): privacy.delta = {p.delta:g} is not below 1/n = {1 / n:.3g}, "
                   f"so the guarantee is void; lower privacy.delta, or {fix}")
    return out
