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


def load_federated_dir(plan: Plan, data_dir: Path) -> FederatedData:
    """Read back a folder written by ``prepare_demo``, through each roster site's site file."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"data folder {data_dir} does not exist; create it with `fltac data prepare-demo`")
    train: dict[str, dict[str, TaskDataset]] = {}
    site_test: dict[str, dict[str, TaskDataset]] = {}
    for s in plan.roster:
        path = data_dir / s / SITE_FILE
        if not path.is_file():
            raise DataError(f"site file {path} is missing; re-run `fltac data prepare-demo` with this plan")
        tr, te = load_site_data(load_site(path, plan), plan)
        if tr:
            train[s] = tr
        if te:
            site_test[s] = te
    test = {}
    for task in plan.tasks:
        path = data_dir / TEST_DIR / f"{task.name}.csv"
        if not path.is_file():
            raise DataError(f"global test file {path} is missing; re-run `fltac data prepare-demo` with this plan")
        test[task.name] = load_task_file(path, task)
    return FederatedData(train, site_test, test, sites=list(plan.roster))
