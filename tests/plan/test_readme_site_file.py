"""The README documents every site-file key (the format must be learnable without reading the code),
and its two examples are valid site files."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from fltac_secure.plan.load import validate
from fltac_secure.plan.site import CertPaths, Site, TaskData

README = Path(__file__).resolve().parents[2] / "README.md"


def _section() -> str:
    text = README.read_text()
    return text[text.index("## Site files"):text.index("\n## ", text.index("## Site files") + 1)]


def test_every_key_is_in_the_table() -> None:
    table = {m.group(1) for m in re.finditer(r"^\| `([a-z_.<>]+)` \|", _section(), re.M)}
    keys = set(Site.model_fields) - {"certs", "data"}
    keys |= {f"certs.{k}" for k in CertPaths.model_fields} | {f"data.<task>.{k}" for k in TaskData.model_fields}
    assert keys == table


def test_both_examples_are_valid_site_files() -> None:
    examples = re.findall(r"```yaml\n(.*?)```", _section(), re.S)
    roles = [validate(Site, yaml.safe_load(e), "README example").role for e in examples]
    assert roles == ["aggregator", "collaborator"]
