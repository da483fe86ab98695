"""A whole federation laid out on one machine: data, CA, enrolled sites (used by `fltac demo` and tests).

``build_federation`` writes, under one folder::

    plan.yaml                the federation's plan
    ca/                      the federation CA (key 0600, crl.pem, index)
    aggregator/              the aggregator's workspace and site file, certs/ (incl. crl.pem)
    <site>/                  each site's workspace, site file, data/ and certs/
    test/<task>.csv          the global held-out test sets

Every site is enrolled through the real flow: it makes its own key and CSR
(``make_request``), the CA checks the CSR fingerprint the site printed and
signs (``sign_request``).  Nothing here runs a round.
"""

from __future__ import annotations

import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fltac_secure.data.layout import AGGREGATOR, SITE_FILE, TEST_DIR, prepare_demo
from fltac_secure.atomic import atomic_write_bytes
from fltac_secure.plan import Plan


@dataclass(frozen=True)
class FederationLayout:
    """Where everything of a laid-out federation is."""

    root: Path
    plan_path: Path
    ca_dir: Path
    aggregator: Path  # its folder (workspace + site.yaml)
    sites: dict[str, Path]  # collaborator -> its folder
    endpoint: str

    def site_file(self, name: str) -> Path:
        return (self.aggregator if name == AGGREGATOR else self.sites[name]) / SITE_FILE

    @property
    def test_dir(self) -> Path:
        return self.root / TEST_DIR


def free_endpoint() -> str:
    """A loopback TCP endpoint whose port was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def write_plan(plan: Plan, path: Path) -> Path:
    atomic_write_bytes(path, yaml.safe_dump(plan.model_dump(mode="json"), sort_keys=False).encode())
    return path


def enroll(name: str, role: str, folder: Path, ca_dir: Path) -> Path:
    """The site makes its key + CSR; the CA signs after matching the fingerprint; returns the cert path."""
    from fltac_secure.pki import make_request, sign_request

    _key, csr, fingerprint = make_request(name, role, folder / "certs")  # type: ignore[arg-type]
    return sign_request(csr, ca_dir, fingerprint)


def publish_crl(layout: FederationLayout) -> None:
    """Copy the CA's current CRL to the aggregator and every site (after a revocation).

    The aggregator refuses revoked sites at the handshake; the sites check each other's
    secure aggregation keys against it.
    """
    from fltac_secure.pki.ca import CRL_FILE

    for folder in (layout.aggregator, *layout.sites.values()):
        shutil.copyfile(layout.ca_dir / CRL_FILE, folder / "certs" / "crl.pem")


def _site_file_with_crl(path: Path) -> None:
    """Point a collaborator's site file at its copy of the CRL (demo layouts publish one to every site)."""
    data = yaml.safe_load(path.read_text())
    data["certs"]["crl"] = "certs/crl.pem"
    head = "".join(line for line in path.read_text().splitlines(keepends=True) if line.startswith("#"))
    path.write_text(head + yaml.safe_dump(data, sort_keys=False))


def build_federation(plan: Plan, root: Path, *, endpoint: str | None = None) -> FederationLayout:
    """Demo data (prepare_demo), a CA, and every site enrolled; returns the layout."""
    from fltac_secure.pki import init_ca

    root = Path(root)
    endpoint = endpoint or free_endpoint()
    prepare_demo(plan, root, aggregator_endpoint=endpoint)
    ca_dir = root / "ca"
    init_ca(ca_dir)
    sites = {s: root / s for s in plan.roster if (root / s / SITE_FILE).is_file()}
    layout = FederationLayout(root, write_plan(plan, root / "plan.yaml"), ca_dir, root / AGGREGATOR, sites, endpoint)
    enroll(AGGREGATOR, "aggregator", layout.aggregator, ca_dir)
    for name, folder in sites.items():
        enroll(name, "collaborator", folder, ca_dir)
    publish_crl(layout)
    for name in sites:
        _site_file_with_crl(layout.site_file(name))
    return layout


def site_counts(layout: FederationLayout) -> dict[str, dict[str, int]]:
    """Training examples per site per task (from partition.json)."""
    import json

    summary: dict[str, Any] = json.loads((layout.root / "partition.json").read_text())
    return {s: {t: int(v["train"]) for t, v in tasks.items()} for s, tasks in summary["sites"].items()}
