"""Task data: files (CSV/JSONL via datasets), shipped demo sources, the federated split.

Pure-ish: reads and writes files, no sockets, no CLI. The simulator and the
networked roles use the same functions, so a federation's data is built once.
"""

from fltac_secure.data.dataset import TaskDataset, stratified_sample, train_test_split
from fltac_secure.data.federated import FederatedData, build_federated_data
from fltac_secure.data.files import atomic_write_text, load_task_file, write_task_csv
from fltac_secure.data.layout import (
    load_federated_dir,
    load_site_data,
    load_sites,
    prepare_demo,
    write_federated_dir,
)
from fltac_secure.data.partition import dirichlet_partition, task_seed
from fltac_secure.data.sources import load_demo_task, synthetic_task

__all__ = [
    "FederatedData",
    "TaskDataset",
    "atomic_write_text",
    "build_federated_data",
    "dirichlet_partition",
    "load_demo_task",
    "load_federated_dir",
    "load_site_data",
    "load_sites",
    "load_task_file",
    "prepare_demo",
    "stratified_sample",
    "synthetic_task",
    "task_seed",
    "train_test_split",
    "write_federated_dir",
    "write_task_csv",
]
