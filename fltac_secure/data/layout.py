"""The demo federation on disk: per-site data files and site files, and reading them back.

Layout written by ``prepare_demo`` (all paths in site files are relative, so
the folder can be moved or copied to other machines)::

    out/<site>/site.yaml                 role collaborator, certs/<site>.crt|.key, certs/ca.crt
    out/<site>/data/<task>.train.csv     text,label (label names)
    out/<site>/data/<task>.test.csv      the site's local held-out part (if non-empty)
    out/test/<task>.csv                  the global held-out test set per task
    out/aggregator/site.yaml             role aggregator, bind, certs incl. certs/crl.pem
    out/partition.json                   examples per site per task, seeds, plan hash
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from fltac_secure.data.dataset import TaskDataset
from fltac_secure.data.federated import FederatedData, build_federated_data
from fltac_secure.data.files import atomic_write_text, load_task_file, task_csv_text
from fltac_secure.errors import DataError
from fltac_secure.plan.load import load_site, plan_hash, validate
from fltac_secure.plan.schema import Plan
from fltac_secure.plan.site import Site

AGGREGATOR = "aggregator"
TEST_DIR = "test"
PARTITION_FILE = "partition.json"
SITE_FILE = "site.yaml"
_RESERVED = {AGGREGATOR, TEST_DIR}


def collaborator_site(plan: Plan, fed: FederatedData, site: str, endpoint: str) -> dict[str, Any]:
    """The site-file mapping of one collaborator (paths relative to its folder)."""
    data = {}
    for t in fed.tasks_of(site):
        entry = {"train": f"data/{t}.train.csv"}
        if t in fed.site_test.get(site, {}):
            entry["test"] = f"data/{t}.test.csv"
        data[t] = entry
    return {
        "name": site,
        "role": "collaborator",
        "workspace": ".",
        "certs": {"cert": f"certs/{site}.crt", "key": f"certs/{site}.key", "ca": "certs/ca.crt"},
        "aggregator": endpoint,
        "data": data,
    }


def aggregator_site(endpoint: str) -> dict[str, Any]:
    """The aggregator's site-file mapping: binds ``endpoint``; checks peers against the CRL."""
    return {
        "name": AGGREGATOR,
        "role": "aggregator",
        "workspace": ".",
        "certs": {
            "cert": f"certs/{AGGREGATOR}.crt",
            "key": f"certs/{AGGREGATOR}.key",
            "ca": "certs/ca.crt",
            "crl": "certs/crl.pem",
        },
        "bind": endpoint,
    }


def _site_yaml(mapping: dict[str, Any], plan: Plan) -> str:
    validate(Site, mapping, f"site file for {mapping['name']!r}")  # never write a file load_site refuses
    head = f"# Site file for {mapping['name']!r} in federation {plan.federation!r} (written by fltac data prepare-demo).\n"
    return head + yaml.safe_dump(mapping, sort_keys=False)


def _check_out(plan: Plan, out: Path) -> None:
    clash = sorted(_RESERVED & set(plan.roster))
    if clash:
        raise DataError(f"site name(s) {clash} clash with prepare-demo's folders; rename them in the roster")
    if out.exists() and not out.is_dir():
        raise DataError(f"output {out} exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not (out / PARTITION_FILE).is_file():
        raise DataError(f"output folder {out} is not empty and was not made by prepare-demo; choose an empty folder")


def partition_summary(plan: Plan, fed: FederatedData, seed: int) -> dict[str, Any]:
    """What ``partition.json`` holds: settings, plan hash and counts per site per task."""
    p = plan.partition
    return {
        "federation": plan.federation,
        "plan_hash": plan_hash(plan),
        "seed": seed,
        "alpha": p.alpha,
        "min_share": p.min_share,
        "test_fraction": p.test_fraction,
        "max_examples_per_task": p.max_examples_per_task,
        "sites": fed.counts(),
        "test": {t: len(ds) for t, ds in fed.test.items()},
    }


def write_federated_dir(plan: Plan, fed: FederatedData, out: Path, seed: int, endpoint: str) -> Path:
    """Write ``fed`` in the layout above (site files validated before anything is written)."""
    out = Path(out)
    _check_out(plan, out)
    site_texts = {s: _site_yaml(collaborator_site(plan, fed, s, endpoint), plan) for s in fed.train}
    agg_text = _site_yaml(aggregator_site(endpoint), plan)
    for s, tasks in fed.train.items():
        for t, ds in tasks.items():
            atomic_write_text(out / s / "data" / f"{t}.train.csv", task_csv_text(ds, plan.task(t)))
            if t in fed.site_test.get(s, {}):
                test_ds = fed.site_test[s][t]
                atomic_write_text(out / s / "data" / f"{t}.test.csv", task_csv_text(test_ds, plan.task(t)))
        atomic_write_text(out / s / SITE_FILE, site_texts[s])
    for t, ds in fed.test.items():
        atomic_write_text(out / TEST_DIR / f"{t}.csv", task_csv_text(ds, plan.task(t)))
    atomic_write_text(out / AGGREGATOR / SITE_FILE, agg_text)
    summary = partition_summary(plan, fed, seed)
    atomic_write_text(out / PARTITION_FILE, json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return out


def prepare_demo(
    plan: Plan, out: Path, *, seed: int | None = None, aggregator_endpoint: str = "tcp://127.0.0.1:5555"
) -> Path:
    """Build the plan's demo federation from shipped data and write it under ``out``; returns ``out``.

    Every roster site gets at least one task (see ``build_federated_data``).
    """
    seed = plan.partition.seed if seed is None else seed
    fed = build_federated_data(plan, seed=seed)
    return write_federated_dir(plan, fed, Path(out), seed, aggregator_endpoint)


def load_site_data(site: Site, plan: Plan) -> tuple[dict[str, TaskDataset], dict[str, TaskDataset]]:
    """A collaborator's (train, local test) data sets per task, from its (resolved) site file."""
    train: dict[str, TaskDataset] = {}
    test: dict[str, TaskDataset] = {}
    for t, entry in site.data.items():
        task = plan.task(t)
        train[t] = load_task_file(entry.train, task, entry.text_column, entry.label_column)
        if entry.test is not None:
            test[t] = load_task_file(entry.test, task, entry.text_column, entry.label_column)
    return train, test


def load_federated_dir(plan: Plan, data_dir: Path, *, test_dir: Path | None = None) -> FederatedData:
    """Read a folder laid out as above (written by ``prepare_demo`` or by hand with your own data).

    Every roster site needs ``<data_dir>/<site>/site.yaml``; a task's global
    test set is ``<test_dir>/<task>.csv`` (default ``<data_dir>/test``), or when
    that file is absent the union of the sites' local test files for the task
    (see ``load_sites``).
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"data folder {data_dir} does not exist; give a folder with <site>/site.yaml per roster site "
                        "(`fltac data prepare-demo` writes one for plans with demo sources)")
    missing = [str(data_dir / s / SITE_FILE) for s in plan.roster if not (data_dir / s / SITE_FILE).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more roster site(s))" if len(missing) > 1 else ""
        raise DataError(f"site file {missing[0]} is missing{more}: the data folder needs "
                        f"<site>/{SITE_FILE} for every roster site; add them, or pass the site files you have "
                        "with `fltac simulate --site`")
    return load_sites(plan, [data_dir / s / SITE_FILE for s in plan.roster],
                      test_dir=data_dir / TEST_DIR if test_dir is None else test_dir)


def load_sites(plan: Plan, site_files: list[Path], *, test_dir: Path | None = None) -> FederatedData:
    """A federation's data from the collaborators' own site files, read as each site reads its own.

    Each file is loaded with ``load_site`` against the plan and its data with
    ``load_site_data`` (what ``fltac collaborator start`` does), so a
    simulation on these files trains exactly what the networked sites train.
    Roster sites without a file sit out. A task's global test set is
    ``test_dir/<task>.csv`` if it exists, else the union of the sites' local
    test files for that task (``FederatedData.notes`` says which was used).
    """
    if not site_files:
        raise DataError("no site files given; pass one --site FILE per collaborator")
    train: dict[str, dict[str, TaskDataset]] = {}
    site_test: dict[str, dict[str, TaskDataset]] = {}
    seen: dict[str, Path] = {}
    for path in site_files:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"site file {path} does not exist; check the path")
        site = load_site(path, plan)
        if site.role != "collaborator":
            raise DataError(f"site file {path} is for role {site.role!r}; give the collaborators' site files")
        if site.name in seen:
            raise DataError(f"site {site.name!r} is in both {seen[site.name]} and {path}; give each site once")
        seen[site.name] = path
        tr, te = load_site_data(site, plan)
        train[site.name] = {t.name: tr[t.name] for t in plan.tasks if t.name in tr}  # plan order, as slots are
        if te:
            site_test[site.name] = te
    test, notes = _global_tests(plan, site_test, test_dir)
    order = [s for s in plan.roster if s in seen]
    return FederatedData({s: train[s] for s in order}, {s: site_test[s] for s in order if s in site_test}, test,
                         sites=order, notes=notes)


def _global_tests(plan: Plan, site_test: dict[str, dict[str, TaskDataset]],
                  test_dir: Path | None) -> tuple[dict[str, TaskDataset], list[str]]:
    test: dict[str, TaskDataset] = {}
    notes: list[str] = []
    for task in plan.tasks:
        path = None if test_dir is None else Path(test_dir) / f"{task.name}.csv"
        if path is not None and path.is_file():
            test[task.name] = load_task_file(path, task)
            continue
        parts = [(s, per[task.name]) for s, per in site_test.items() if task.name in per and len(per[task.name])]
        if not parts:
            where = f"{path} or " if path is not None else ""
            raise DataError(f"no test data for task {task.name!r}: add {where}a 'test' file for it in a site file")
        test[task.name] = TaskDataset(task.name, [x for _, d in parts for x in d.texts],
                                      np.concatenate([d.labels for _, d in parts]))
        notes.append(f"task {task.name!r}: global test set = the local test files of {len(parts)} site(s) "
                     f"({len(test[task.name])} examples)" + (f"; no {path}" if path is not None else ""))
    return test, notes
