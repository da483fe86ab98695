"""Fixtures: a federation enrolled through the real flow, once per module, in a temp dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from fltac_secure.pki.testing import FederationPKI, enroll_federation


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> FederationPKI:
    return enroll_federation(tmp_path_factory.mktemp("fed"), ["c1", "c2", "c3"], "agg")


@pytest.fixture()
def ca_dir(tmp_path: Path) -> Path:
    from fltac_secure.pki import init_ca

    init_ca(tmp_path / "ca")
    return tmp_path / "ca"
