"""compression.trim_head is simulator-only for now: both networked roles refuse it at start, naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from roles_harness import make_fed, tiny_plan

from fltac_secure.errors import ConfigError


def test_both_roles_refuse_a_trimmed_plan(tmp_path: Path) -> None:
    fed = make_fed(tmp_path, tiny_plan(compression={"trim_head": True}))
    with pytest.raises(ConfigError, match=r"compression.trim_head.*aggregator.*trim_head: false"):
        fed.aggregator()
    with pytest.raises(ConfigError, match=r"compression.trim_head.*collaborator.*trim_head: false"):
        fed.collaborator("site1")
